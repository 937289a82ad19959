//! Unix stream sockets: binding a socket file safely (a stale one is replaced, anything else is
//! left alone), its permissions, removing it at the end, and who connected (the peer's
//! credentials).

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;

use log::{debug, info};
use socket2::{Domain, SockAddr, Socket, Type};

use super::{Credentials, UnixPath};

/// Permissions for a socket file (`--unix-mode`, octal such as `660`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixMode(pub u32);

impl UnixMode {
    /// Reads octal permissions: `660`, `0600`, `777`.
    ///
    /// # Errors
    /// Anything but one to four octal digits up to `7777`.
    pub fn parse(text: &str) -> Result<UnixMode, String> {
        let digits = text.strip_prefix("0o").unwrap_or(text);
        if digits.is_empty()
            || digits.len() > 4
            || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
        {
            return Err(format!("'{text}' is not an octal mode such as 660 or 600"));
        }
        u32::from_str_radix(digits, 8)
            .map(UnixMode)
            .map_err(|_| format!("'{text}' is not an octal mode"))
    }
}

/// A listening Unix stream socket; its socket file (if it has one) is removed when dropped.
#[derive(Debug)]
pub struct UnixListener {
    socket: Socket,
    path: UnixPath,
}

impl UnixListener {
    /// Binds `path` and listens, non-blocking. A file already at `path` is replaced only if it
    /// is a socket that nobody accepts on (a connect is refused): a live socket or any other
    /// file is an error naming the path.
    ///
    /// # Errors
    /// One that says so for a live socket or a file that is not a socket, and what `bind(2)`
    /// says otherwise.
    pub fn bind(path: &UnixPath, backlog: u32, mode: Option<UnixMode>) -> io::Result<UnixListener> {
        let addr = match path {
            UnixPath::File(file) => {
                clear_stale(file)?;
                SockAddr::unix(file)?
            }
            UnixPath::Abstract(name) => {
                let mut bytes = vec![0];
                bytes.extend_from_slice(name.as_bytes());
                SockAddr::unix(std::ffi::OsStr::from_bytes(&bytes))?
            }
        };
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        socket.bind(&addr)?;
        let listener = UnixListener {
            socket,
            path: path.clone(),
        };
        // Before listen(2): no client can connect while the file still has the umask's mode.
        if let (Some(UnixMode(mode)), UnixPath::File(file)) = (mode, path) {
            fs::set_permissions(file, fs::Permissions::from_mode(mode))?;
        }
        listener
            .socket
            .listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
        listener.socket.set_nonblocking(true)?;
        Ok(listener)
    }

    /// Where it listens.
    pub fn path(&self) -> &UnixPath {
        &self.path
    }

    /// Accepts one waiting connection, non-blocking, with the peer's credentials.
    ///
    /// # Errors
    /// `WouldBlock` when none is waiting; others as `accept(2)` says.
    pub fn accept(&self) -> io::Result<(UnixStream, Option<Credentials>)> {
        let (socket, _) = self.socket.accept()?;
        socket.set_nonblocking(true)?;
        let stream = UnixStream::from(std::os::fd::OwnedFd::from(socket));
        let credentials = crate::platform::peer_credentials(&stream);
        Ok((stream, credentials))
    }
}

impl AsFd for UnixListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl Drop for UnixListener {
    fn drop(&mut self) {
        if let UnixPath::File(file) = &self.path {
            match fs::remove_file(file) {
                Ok(()) => debug!("removed the socket file {}", file.display()),
                Err(err) => debug!(
                    "cannot remove the socket file {}: {}",
                    file.display(),
                    crate::error::describe(&err)
                ),
            }
        }
    }
}

/// Removes a socket file left by a run that ended without removing it: one that exists, is a
/// socket, and refuses connections. Anything else at `path` is left alone, with an error.
fn clear_stale(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::other(
            "a file that is not a socket is there; remove it or choose another path",
        ));
    }
    match try_connect(path) {
        Ok(()) => Err(io::Error::other("another process listens on it")),
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => Err(io::Error::other(
            "another process listens on it (and accepts no more connections now)",
        )),
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
            info!("replacing the stale socket file {}", path.display());
            fs::remove_file(path)
        }
        Err(err) => Err(err),
    }
}

/// Connects to the socket at `path` without waiting: a listener whose backlog is full says
/// "try again" (`WouldBlock`) instead of holding the caller until it accepts.
fn try_connect(path: &Path) -> io::Result<()> {
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.connect(&SockAddr::unix(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_one_to_four_octal_digits() {
        for (text, mode) in [
            ("660", 0o660),
            ("0600", 0o600),
            ("0o640", 0o640),
            ("7", 0o7),
            ("7777", 0o7777),
        ] {
            assert_eq!(UnixMode::parse(text), Ok(UnixMode(mode)), "{text}");
        }
        for text in ["", "0o", "8", "66a", "rw-", "07777", "-600", "+600"] {
            let err = UnixMode::parse(text).expect_err(text);
            assert!(err.contains("octal mode"), "{text}: {err}");
        }
    }
}
