//! The control socket's I/O: accepting clients, reading their bytes into the session,
//! writing what it answers, closing. The protocol and the requests are the session's.

use std::io::{ErrorKind, Read, Write};

use mio::{Interest, Token};
use tracing::warn;

use super::super::session::TOO_MANY_CLIENTS;
use super::Engine;

impl Engine {
    pub(super) fn accept_clients(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let id = self.next_token;
                    if !self.session.control_open(id) {
                        let _ = stream.write(TOO_MANY_CLIENTS);
                        continue;
                    }
                    self.next_token += 1;
                    if self
                        .poll
                        .registry()
                        .register(
                            &mut stream,
                            Token(id),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_err()
                    {
                        let clock = self.clock();
                        self.session.on_control_closed(clock, id);
                        continue;
                    }
                    self.clients.insert(id, stream);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!("control accept: {e}");
                    return;
                }
            }
        }
    }

    pub(super) fn on_client_event(&mut self, id: usize, readable: bool) {
        let mut close = false;
        if readable {
            let mut buf = [0u8; 16 * 1024];
            loop {
                let Some(s) = self.clients.get_mut(&id) else {
                    return;
                };
                match s.read(&mut buf) {
                    Ok(0) => {
                        close = true;
                        break;
                    }
                    Ok(n) => {
                        let clock = self.clock();
                        if !self.session.on_control_bytes(clock, id, &buf[..n]) {
                            close = true;
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        close = true;
                        break;
                    }
                }
            }
        }
        let flushed = self.flush_client(id);
        if close || !flushed {
            self.close_client(id);
        }
        self.after_input();
    }

    pub(super) fn close_client(&mut self, id: usize) {
        if let Some(mut s) = self.clients.remove(&id) {
            let _ = self.poll.registry().deregister(&mut s);
        }
        let clock = self.clock();
        self.session.on_control_closed(clock, id);
    }

    /// Writes what the client has pending; false when the client is gone or must be closed.
    pub(super) fn flush_client(&mut self, id: usize) -> bool {
        let Some(s) = self.clients.get_mut(&id) else {
            return false;
        };
        loop {
            let pending = self.session.control_out(id);
            if pending.is_empty() {
                return !self.session.control_closing(id);
            }
            match s.write(pending) {
                Ok(0) => return false,
                Ok(n) => self.session.control_written(id, n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}
