//! Configuration: one [`Settings`] type for every process, filled from
//! defaults < env file < `IB_STREAM_*` variables < flags.

mod env_file;
mod settings;
mod tracked;

pub use env_file::{EnvFileError, EnvLine, parse_env, read_env_file};
pub use settings::{
    ConfigError, ConfigSources, Environment, FsyncPolicy, Loaded, Settings, Source, StorageFormats,
    absolutize, known_keys, load,
};
pub use tracked::{
    DEFAULT_KINDS, TrackedContract, TrackedError, TrackedReason, format_tracked, parse_tick_type,
    parse_tracked,
};
