//! What differs between the systems overhear builds for, and the operating-system controls that
//! std lacks, in one place: how the stop pipe is made, the quick ACK a drain sends, which file
//! systems keep concurrent writes whole, how far the open-file limit can be raised, the
//! file-size signal, reading the terminal from the foreground only (SIGTTIN), who is at the
//! other end of a Unix socket, how long its path may be and whether it can be abstract, and the
//! kernel's count of dropped datagrams. `poll(2)`, `SO_REUSEADDR` and the backlog are the same on every Unix; the
//! worker threads' own difference lives in `threads`.

use std::fs::File;
use std::io;
use std::net::TcpStream;
use std::os::fd::OwnedFd;

use log::warn;

use crate::error::describe;
use crate::listen::Credentials;

/// A pipe whose ends are non-blocking and closed on exec: (read end, write end). `pipe2(2)` sets
/// both flags at once where it exists; macOS has no `pipe2`, so there they are set just after.
///
/// # Errors
/// When the process is out of file descriptors.
pub fn nonblocking_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    #[cfg(not(target_vendor = "apple"))]
    {
        use rustix::pipe::{PipeFlags, pipe_with};
        Ok(pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?)
    }
    #[cfg(target_vendor = "apple")]
    {
        use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
        use rustix::io::{FdFlags, fcntl_setfd};
        let (read, write) = rustix::pipe::pipe()?;
        for end in [&read, &write] {
            fcntl_setfd(end, FdFlags::CLOEXEC)?;
            fcntl_setfl(end, fcntl_getfl(end)? | OFlags::NONBLOCK)?;
        }
        Ok((read, write))
    }
}

/// Sends the ACK the kernel is delaying on `stream` now (`TCP_QUICKACK`), so a client whose bytes
/// wait behind a full window learns at once that there is room. Linux only; elsewhere there is
/// no such switch and the drain waits for the usual ACK (its grace period covers it).
///
/// # Errors
/// When the socket option cannot be set.
pub fn ack_now(stream: &TcpStream) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    rustix::net::sockopt::set_tcp_quickack(stream, true)?;
    #[cfg(not(target_os = "linux"))]
    let _ = stream;
    Ok(())
}

/// Whether `file` is on a local file system whose `write(2)` to a regular file is all or nothing
/// but for an error, so concurrent writers never tear each other's lines: on Linux ext4, xfs,
/// btrfs, tmpfs, f2fs, zfs, overlayfs (which passes writes to one of those) and ramfs. NFS, FUSE,
/// SMB and anything unknown are not: their writes may come back short, and one writer at a time
/// is safe. Elsewhere no file system is assumed to: one writer at a time.
pub fn keeps_writes_whole(file: &File) -> bool {
    #[cfg(target_os = "linux")]
    {
        const LOCAL: [u32; 8] = [
            0xEF53,      // ext2/3/4
            0x5846_5342, // xfs
            0x9123_683E, // btrfs
            0x0102_1994, // tmpfs
            0xF2F5_2010, // f2fs
            0x2FC1_2FC1, // zfs
            0x794C_7630, // overlayfs
            0x8584_58F6, // ramfs
        ];
        // f_type is a signed integer of 32 or 64 bits, by target; the magic numbers are 32-bit
        // patterns (btrfs's has the top bit set), so they are compared as such.
        #[allow(clippy::cast_possible_truncation)]
        rustix::fs::fstatfs(file).is_ok_and(|fs| LOCAL.contains(&(fs.f_type as u32)))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        false
    }
}

/// The most open files macOS lets a process have however high its hard limit says
/// (`OPEN_MAX`): asking for more fails there.
#[cfg(target_vendor = "apple")]
const OPEN_MAX: u64 = 10_240;

/// Raises the soft limit on open files to the hard limit, since every client holds a descriptor
/// (the usual soft limit, 1024 on Linux and 256 on macOS, would cap a run at a few hundred
/// clients). Where the hard limit is unlimited but the kernel will not go that far (macOS), it
/// settles for [`OPEN_MAX`]. Returns the limit in force afterwards, if there is one.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    #[cfg(target_vendor = "apple")]
    let wanted = [
        limit.maximum,
        Some(limit.maximum.map_or(OPEN_MAX, |m| m.min(OPEN_MAX))),
    ];
    #[cfg(not(target_vendor = "apple"))]
    let wanted = [limit.maximum];
    let mut failure = None;
    for current in wanted {
        if current.is_some() && current <= limit.current {
            return limit.current;
        }
        match setrlimit(
            Resource::Nofile,
            Rlimit {
                current,
                maximum: limit.maximum,
            },
        ) {
            Ok(()) => return current,
            Err(err) => failure = Some(err),
        }
    }
    if let Some(err) = failure {
        warn!(
            "cannot raise the open-file limit: {}",
            describe(&err.into())
        );
    }
    limit.current
}

/// Ignores SIGXFSZ, so a write past the file-size limit (`ulimit -f`) fails with "file too large"
/// and ends the run with that error, instead of the signal killing the process without a word.
pub fn ignore_file_size_signal() {
    #[allow(unsafe_code)]
    // SAFETY: setting a signal's disposition to SIG_IGN runs no code in a signal context and
    // touches no memory of this process; no other part of the program handles SIGXFSZ.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Whether `input` is a terminal this process may read: the terminal's foreground process
/// group is this process's. Read from the background, a terminal stops the reading process
/// (SIGTTIN): an `overhear &` must not read it.
pub fn reads_terminal_in_foreground(input: impl std::os::fd::AsFd) -> bool {
    rustix::termios::tcgetpgrp(input).is_ok_and(|group| group == rustix::process::getpgrp())
}

/// Ignores SIGTTIN, so a run sent to the background after it started reading its terminal
/// (Ctrl-Z, `bg`) is not stopped whole by its next read: the read fails instead, and the input
/// waits until the run is in the foreground again.
pub fn ignore_background_read_signal() {
    #[allow(unsafe_code)]
    // SAFETY: as for SIGXFSZ below: SIG_IGN runs no code and touches no memory; nothing else in
    // the program handles SIGTTIN.
    unsafe {
        libc::signal(libc::SIGTTIN, libc::SIG_IGN);
    }
}

/// The credentials of the process at the other end of a Unix socket: pid, uid and gid from
/// `SO_PEERCRED` and the command name from `/proc` on Linux; uid and gid from `getpeereid` on
/// macOS and the BSDs (no pid there). `None` when the system will not say.
pub fn peer_credentials(stream: &std::os::unix::net::UnixStream) -> Option<Credentials> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // Through libc rather than rustix: rustix keeps the pid as a non-zero type, and the
        // kernel reports 0 for a peer in a pid namespace this process cannot see.
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        #[allow(unsafe_code)]
        // SAFETY: SO_PEERCRED writes at most `len` bytes, the size of the `ucred` it is given a
        // pointer to (a live local), and updates `len`; the descriptor stays open for the call.
        let status = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&raw mut cred).cast(),
                &mut len,
            )
        };
        if status != 0 {
            return None;
        }
        let pid = u32::try_from(cred.pid).ok().filter(|&pid| pid > 0);
        let command = pid
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok())
            .map(|comm| comm.trim_end().to_owned())
            .filter(|comm| !comm.is_empty());
        Some(Credentials {
            pid,
            uid: cred.uid,
            gid: cred.gid,
            command,
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        use std::os::fd::AsRawFd;
        let (mut uid, mut gid) = (0, 0);
        #[allow(unsafe_code)]
        // SAFETY: getpeereid only writes the two integers it is given pointers to, both live
        // locals, and reads the descriptor, which `stream` keeps open for the call.
        let status = unsafe { libc::getpeereid(stream.as_raw_fd(), &mut uid, &mut gid) };
        (status == 0).then_some(Credentials {
            pid: None,
            uid,
            gid,
            command: None,
        })
    }
}

/// Longest path of a Unix socket: `sun_path` holds 108 bytes on Linux (104 on macOS and the
/// BSDs), the last of them the terminating NUL.
#[cfg(target_os = "linux")]
pub const UNIX_PATH_MAX: usize = 107;
#[cfg(not(target_os = "linux"))]
pub const UNIX_PATH_MAX: usize = 103;

/// Whether Unix sockets can have names in an abstract namespace (`@name`): Linux only.
pub const ABSTRACT_SOCKETS: bool = cfg!(target_os = "linux");

/// How many datagrams the kernel dropped for `socket` because its receive buffer was full: the
/// socket's own count (`SO_MEMINFO`, the number `/proc/net/udp` shows as `drops`), on Linux.
/// (A listing of `/proc/net/udp` can skip a socket while others open and close.) `None` where
/// the system does not count them per socket.
pub fn udp_drops(socket: &std::net::UdpSocket) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // Room for the counters of kernels newer than these headers too.
        let mut info = [0_u32; 16];
        let mut len = libc::socklen_t::try_from(std::mem::size_of_val(&info)).ok()?;
        #[allow(unsafe_code)]
        // SAFETY: `info` is a live buffer of `len` bytes; the kernel writes at most `len` of
        // them and sets `len` to how many it wrote.
        let status = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MEMINFO,
                info.as_mut_ptr().cast(),
                &raw mut len,
            )
        };
        let drops = usize::try_from(libc::SK_MEMINFO_DROPS).ok()?;
        let written = usize::try_from(len).ok()? / std::mem::size_of::<u32>();
        (status == 0 && drops < written).then(|| u64::from(info[drops]))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = socket;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_ends_at_least_where_it_was() {
        let before = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        let after = raise_fd_limit();
        assert!(
            after >= before.current || after.is_none(),
            "{after:?} < {before:?}"
        );
        let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(now.current, after);
    }

    #[test]
    fn the_pipe_is_non_blocking() {
        let (read, _write) = nonblocking_pipe().expect("a pipe");
        let mut byte = [0];
        let err = rustix::io::read(&read, &mut byte).expect_err("nothing to read");
        assert_eq!(err, rustix::io::Errno::AGAIN);
    }

    #[test]
    fn quick_ack_works_on_a_connected_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        // On Linux the switch is readable: off (delayed ACKs) before, on after.
        #[cfg(target_os = "linux")]
        {
            rustix::net::sockopt::set_tcp_quickack(&client, false).expect("TCP_QUICKACK off");
            assert!(!rustix::net::sockopt::tcp_quickack(&client).expect("TCP_QUICKACK"));
        }
        ack_now(&client).expect("TCP_QUICKACK");
        #[cfg(target_os = "linux")]
        assert!(rustix::net::sockopt::tcp_quickack(&client).expect("TCP_QUICKACK"));
    }

    /// The kernel's count of datagrams dropped for a full receive buffer: none for a fresh
    /// socket; after 100 datagrams of 1,000 bytes to a buffer of a few KiB, what was not
    /// received, exactly.
    #[cfg(target_os = "linux")]
    #[test]
    fn udp_drops_count_what_a_full_buffer_turned_away() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        assert_eq!(udp_drops(&receiver), Some(0));
        rustix::net::sockopt::set_socket_recv_buffer_size(&receiver, 4096).expect("SO_RCVBUF");
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = receiver.local_addr().expect("address");
        for _ in 0..100 {
            sender.send_to(&[b'x'; 1000], to).expect("send");
        }
        receiver.set_nonblocking(true).expect("non-blocking");
        let mut received = 0;
        let mut buf = [0; 2048];
        while receiver.recv(&mut buf).is_ok() {
            received += 1;
        }
        let dropped = udp_drops(&receiver).expect("counted");
        assert!(dropped > 0, "nothing dropped, {received} received");
        assert_eq!(received + dropped, 100);
    }

    /// tmpfs keeps writes whole; procfs is not a file system messages are written to, so it is
    /// not assumed to.
    #[cfg(target_os = "linux")]
    #[test]
    fn writes_are_whole_on_tmpfs_not_on_an_unknown_file_system() {
        let path = std::path::Path::new("/dev/shm")
            .join(format!("overhear-unit-whole-{}", std::process::id()));
        let tmpfs = File::create(&path).expect("a file in /dev/shm");
        let _ = std::fs::remove_file(&path);
        assert!(keeps_writes_whole(&tmpfs));
        let proc = File::open("/proc/self/status").expect("procfs");
        assert!(!keeps_writes_whole(&proc));
    }
}
