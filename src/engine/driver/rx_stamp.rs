//! Reads of the IB socket that carry the kernel's software receive stamp.
//!
//! `SO_TIMESTAMPING` with `SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE` makes
//! the kernel stamp every incoming packet when it reaches the socket layer and hand the
//! stamp back with `recvmsg` as an `SCM_TIMESTAMPING` control message. For TCP the stamp is
//! that of the last segment the read copied from. One `recvmsg` replaces the plain `read`,
//! so the hot path gains no syscall; the control buffer is allocated once, with the reader.
//! Everything goes through `nix`'s safe wrappers: no `unsafe` here.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd};

use nix::sys::socket::TimestampingFlag;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt::Timestamping};

/// Asks the kernel to stamp what `sock` receives (software stamps, `CLOCK_REALTIME`).
/// Without it (an old kernel, a socket type that refuses) reads carry no stamp.
pub fn enable<F: AsFd>(sock: &F) -> std::io::Result<()> {
    let flags = TimestampingFlag::SOF_TIMESTAMPING_RX_SOFTWARE
        | TimestampingFlag::SOF_TIMESTAMPING_SOFTWARE;
    setsockopt(sock, Timestamping, &flags).map_err(std::io::Error::from)
}

/// One socket read: the bytes and, when the kernel gave one, the receive stamp of the last
/// bytes read (ns since the Unix epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Read {
    /// Bytes read; 0 means the peer closed its side.
    pub bytes: usize,
    /// The kernel's software receive stamp, if any.
    pub kernel_ns: Option<i64>,
}

/// Reads with stamps; owns the control-message buffer so a read allocates nothing.
#[derive(Debug)]
pub struct StampedReader {
    cmsg: Vec<u8>,
}

impl Default for StampedReader {
    fn default() -> Self {
        StampedReader::new()
    }
}

impl StampedReader {
    /// A reader with room for one `SCM_TIMESTAMPING` message (three `timespec`s) and slack.
    pub fn new() -> StampedReader {
        StampedReader {
            cmsg: nix::cmsg_space!(nix::sys::socket::Timestamps, [u64; 4]),
        }
    }

    /// One `recvmsg` into `buf` (non-blocking sockets give `WouldBlock` as usual).
    pub fn read<F: AsRawFd>(&mut self, sock: &F, buf: &mut [u8]) -> std::io::Result<Read> {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut self.cmsg),
            MsgFlags::MSG_DONTWAIT,
        )
        .map_err(std::io::Error::from)?;
        let mut kernel_ns = None;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmTimestampsns(ts) = c {
                    let t = ts.system;
                    let ns = t.tv_sec() * 1_000_000_000 + t.tv_nsec();
                    // A zero stamp means the kernel had none for this data.
                    if ns > 0 {
                        kernel_ns = Some(ns);
                    }
                }
            }
        }
        Ok(Read {
            bytes: msg.bytes,
            kernel_ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn a_read_carries_the_kernels_receive_stamp() {
        let (mut tx, rx) = pair();
        enable(&rx).unwrap();
        let mut r = StampedReader::new();
        let mut buf = [0u8; 64];
        rx.set_nonblocking(false).unwrap();
        // The kernel switches receive stamping on through a deferred work item (the
        // netstamp static key), so the first packets after `enable` may carry no stamp on a
        // busy machine: send until one is stamped, then check that stamp's bounds.
        for _ in 0..500 {
            let before = crate::engine::publish::unix_ns();
            tx.write_all(b"hello").unwrap();
            // Blocking socket, MSG_DONTWAIT: wait for the bytes first.
            let mut got = None;
            for _ in 0..1000 {
                match r.read(&rx, &mut buf) {
                    Ok(x) => {
                        got = Some(x);
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            let after = crate::engine::publish::unix_ns();
            let got = got.expect("the bytes arrived");
            assert_eq!(&buf[..got.bytes], b"hello");
            if let Some(k) = got.kernel_ns {
                assert!(before <= k && k <= after, "{before} <= {k} <= {after}");
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("no read carried a software receive stamp");
    }

    #[test]
    fn without_stamping_a_read_has_no_stamp_and_eof_is_zero_bytes() {
        let (mut tx, rx) = pair();
        tx.write_all(b"x").unwrap();
        drop(tx);
        let mut r = StampedReader::new();
        let mut buf = [0u8; 8];
        let mut reads = Vec::new();
        for _ in 0..1000 {
            match r.read(&rx, &mut buf) {
                Ok(x) => {
                    reads.push(x);
                    if x.bytes == 0 {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(
            reads,
            vec![
                Read {
                    bytes: 1,
                    kernel_ns: None
                },
                Read {
                    bytes: 0,
                    kernel_ns: None
                }
            ]
        );
    }
}
