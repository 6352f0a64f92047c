//! Files and directories only their owner can read: the one place that decides the
//! permissions of everything the project writes under the storage path (segments, sidecars,
//! checkpoint, status, the contract cache) and of `up`'s logs.
//!
//! Files are `0600`, directories `0700`, whatever the process umask: the mode is asked for at
//! creation and then set explicitly (a umask can only take bits away, and a umask of `0777`
//! would otherwise leave a file its owner cannot read). History is market data the account
//! paid for; other users of the machine have no business reading it.
//!
//! Existing paths: a directory passed to [`create_private_dir_all`] and a file opened with
//! [`open_private_append`] are tightened to `0700`/`0600` when they are looser (files and
//! directories written before this rule); intermediate directories that already exist are
//! left alone (they may be the user's, e.g. `/tmp`). Tightening the storage root at recorder
//! start is what closes an old store: nothing below a `0700` root is reachable by others.
//!
//! A group setting (`0640`/`0750` for a configured group, as the shared-memory files allow)
//! is not offered: every reader of storage (web server, tools) runs as the recorder's user
//! today, and a group would need a configuration key read by every writer; add it here when
//! a deployment needs one.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Mode of every file written.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory created.
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` and its missing parents with mode `0700` (each new one), and tightens `dir`
/// itself to `0700` when it exists with a looser mode and belongs to this user.
pub fn create_private_dir_all(dir: &Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut d = Some(dir);
    while let Some(p) = d {
        if p.as_os_str().is_empty() || p.is_dir() {
            break;
        }
        if p.exists() {
            // A path through a file: say so as the kernel would (ENOTDIR), not EEXIST, so the
            // cause reads right and `report::is_permanent` knows a restart cannot cure it.
            return Err(rustix::io::Errno::NOTDIR.into());
        }
        missing.push(p);
        d = p.parent();
    }
    for p in missing.into_iter().rev() {
        match DirBuilder::new().mode(DIR_MODE).create(p) {
            Ok(()) => std::fs::set_permissions(p, Permissions::from_mode(DIR_MODE))?,
            // Made by another process meanwhile: tightened below if it is the leaf.
            Err(e) if e.kind() == ErrorKind::AlreadyExists && p.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    tighten(dir, DIR_MODE)
}

/// Sets `path` to `mode` when it has bits outside it. A path of another user cannot be
/// changed (EPERM) and is left as it is: not ours to change.
fn tighten(path: &Path, mode: u32) -> std::io::Result<()> {
    let m = std::fs::metadata(path)?;
    if m.permissions().mode() & 0o777 & !mode != 0 {
        ignore_not_ours(std::fs::set_permissions(path, Permissions::from_mode(mode)))?;
    }
    Ok(())
}

fn ignore_not_ours(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if e.kind() == ErrorKind::PermissionDenied => Ok(()),
        other => other,
    }
}

/// Opens `path` to read and write, creating it `0600` (and its directory `0700`) when
/// missing; an existing file is tightened to `0600`. Returns the file and whether it was
/// created. Writes go where the caller puts them (positional writes or `append`).
pub fn open_private_rw(path: &Path) -> std::io::Result<(File, bool)> {
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => {
            tighten_file(&f)?;
            Ok((f, false))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if let Some(dir) = path.parent()
                && !dir.as_os_str().is_empty()
            {
                create_private_dir_all(dir)?;
            }
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(FILE_MODE)
                .open(path)?;
            f.set_permissions(Permissions::from_mode(FILE_MODE))?;
            Ok((f, true))
        }
        Err(e) => Err(e),
    }
}

/// Opens `path` for appending (`O_APPEND`), created `0600` in a `0700` directory when
/// missing, tightened to `0600` when it exists (logs).
pub fn open_private_append(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.is_dir()
    {
        create_private_dir_all(dir)?;
    }
    let f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .open(path)?;
    tighten_file(&f)?;
    Ok(f)
}

fn tighten_file(f: &File) -> std::io::Result<()> {
    let m = f.metadata()?;
    if m.permissions().mode() & 0o777 & !FILE_MODE != 0 {
        ignore_not_ours(f.set_permissions(Permissions::from_mode(FILE_MODE)))?;
    }
    Ok(())
}

/// Replaces `path` with `bytes` atomically: a `0600` temporary file beside it (unique to
/// this call, so concurrent writers of one path never mix their bytes), then a rename. With
/// `durable` the file is synced before and its directory after the rename. Creates the
/// directory `0700` when missing.
pub fn write_private_atomic(path: &Path, bytes: &[u8], durable: bool) -> std::io::Result<()> {
    static N: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let res = replace_via(&tmp, path, bytes, durable);
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// [`write_private_atomic`] through the temporary path `tmp` the caller chose (a single
/// writer's fixed name, e.g. the recorder's checkpoint).
pub fn replace_via(tmp: &Path, path: &Path, bytes: &[u8], durable: bool) -> std::io::Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.is_dir()
    {
        create_private_dir_all(dir)?;
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(tmp)?;
    // A leftover temporary file of a crash keeps its old mode through O_TRUNC: set it.
    f.set_permissions(Permissions::from_mode(FILE_MODE))?;
    f.write_all(bytes)?;
    if durable {
        f.sync_data()?;
    }
    drop(f);
    std::fs::rename(tmp, path)?;
    if durable && let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_files_and_directories_are_private_and_old_ones_are_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, Permissions::from_mode(0o755)).unwrap();
        create_private_dir_all(&root).unwrap();
        assert_eq!(
            mode(&root),
            0o700,
            "an existing loose directory is tightened"
        );

        let f = root.join("a/b/c/seg.bin");
        let (_, created) = open_private_rw(&f).unwrap();
        assert!(created);
        assert_eq!(mode(&f), 0o600);
        for d in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&root.join(d)), 0o700, "{d}");
        }
        std::fs::set_permissions(&f, Permissions::from_mode(0o644)).unwrap();
        let (_, created) = open_private_rw(&f).unwrap();
        assert!(!created);
        assert_eq!(mode(&f), 0o600, "an existing loose file is tightened");

        let log = root.join("logs/x.log");
        open_private_append(&log).unwrap();
        assert_eq!((mode(&log), mode(&root.join("logs"))), (0o600, 0o700));

        let j = root.join("cache/k.json");
        write_private_atomic(&j, b"{}", true).unwrap();
        assert_eq!(std::fs::read(&j).unwrap(), b"{}");
        assert_eq!((mode(&j), mode(&root.join("cache"))), (0o600, 0o700));
        let left: Vec<_> = std::fs::read_dir(root.join("cache")).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left");
    }

    #[test]
    fn a_path_through_a_file_is_not_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        let e = create_private_dir_all(&dir.path().join("file/storage")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotADirectory, "{e}");
    }
}
