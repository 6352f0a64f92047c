//! How an ib-stream process reports the error that ends it: one line with each cause once, and
//! an exit code that tells a supervisor (`ib-stream up`, systemd) whether a restart can help.

use std::error::Error;
use std::io::ErrorKind;

/// Exit code of a failure a restart cannot cure (sysexits' `EX_CONFIG`): a bad setting, a port
/// another program holds, storage that cannot be written. `ib-stream up` does not restart a
/// child that exits with it.
pub const EXIT_PERMANENT: u8 = 78;

/// The error and its causes on one line, `outer: cause: cause`, leaving out a cause whose text
/// the line already holds. Many errors print their source in their own message (`cannot listen
/// on ADDR: {source}`) and also return it from `source()`; printing the chain blindly would say
/// every such cause twice.
pub fn one_line(err: &(dyn Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        next = cause.source();
    }
    line
}

/// Whether a restart cannot cure `err`: somewhere in its chain is an I/O error about an address
/// in use or unavailable, missing permission, a read-only file system or a path through a file.
/// (Configuration errors are classified where the configuration is loaded.)
pub fn is_permanent(err: &(dyn Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ErrorKind::AddrInUse
                    | ErrorKind::AddrNotAvailable
                    | ErrorKind::PermissionDenied
                    | ErrorKind::ReadOnlyFilesystem
                    | ErrorKind::NotADirectory
            )
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// Whether `err`'s chain holds an I/O error saying the other end of a pipe has gone: for a
/// command printing to stdout, the reader closed it (`| head`), which is not a failure.
pub fn is_broken_pipe(err: &(dyn Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == ErrorKind::BrokenPipe
        {
            return true;
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot listen on {addr}: {source}")]
    struct Bind {
        addr: String,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("open {path}")]
    struct Open {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let e = Bind {
            addr: "127.0.0.1:8101".into(),
            source: std::io::Error::from(ErrorKind::AddrInUse),
        };
        let io_text = std::io::Error::from(ErrorKind::AddrInUse).to_string();
        let line = one_line(&e);
        assert_eq!(line, format!("cannot listen on 127.0.0.1:8101: {io_text}"));
        assert_eq!(line.matches(&io_text).count(), 1, "{line}");
        // Through anyhow's context too (the binary's edge).
        let any = anyhow::Error::new(e).context("serve");
        let line = one_line(any.as_ref());
        assert_eq!(line.matches(&io_text).count(), 1, "{line}");
        assert!(line.starts_with("serve: cannot listen on"), "{line}");
    }

    #[test]
    fn a_cause_not_in_the_message_is_appended() {
        let e = Open {
            path: "/x".into(),
            source: std::io::Error::from(ErrorKind::NotFound),
        };
        let line = one_line(&e);
        assert!(line.starts_with("open /x: "), "{line}");
        assert!(line.len() > "open /x: ".len(), "{line}");
    }

    #[test]
    fn permanent_causes_are_found_anywhere_in_the_chain() {
        let e = anyhow::Error::new(Bind {
            addr: "a".into(),
            source: std::io::Error::from(ErrorKind::AddrInUse),
        })
        .context("outer");
        assert!(is_permanent(e.as_ref()));
        let e = anyhow::Error::new(std::io::Error::from(ErrorKind::ConnectionRefused));
        assert!(!is_permanent(e.as_ref()));
    }
}
