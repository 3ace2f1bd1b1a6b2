//! The only module with `unsafe` code: thin wrappers for the syscalls that `nix` does not wrap
//! safely (raw `clone`, `capset`, seccomp, `mount_setattr`, `open_tree`, `move_mount`,
//! `close_range`, the loopback `ioctl`, signal dispositions, `_exit`, `bpf` program load and
//! cgroup attach).
//!
//! Why it exists: the workspace forbids `unsafe`; this crate denies it and opts in per function,
//! so a reviewer can audit every unsafe block in one short file. Each wrapper takes and returns
//! plain Rust values and documents why the call is sound.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::unistd::Pid;

/// `MOUNT_ATTR_*` from `<linux/mount.h>` (stable kernel ABI).
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub(crate) const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x4;
pub(crate) const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const AT_RECURSIVE: libc::c_uint = 0x8000;
/// `OPEN_TREE_*` and `MOVE_MOUNT_*` from `<linux/mount.h>` (stable kernel ABI).
const OPEN_TREE_CLONE: libc::c_uint = 0x1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Which side of a [`clone_process`] the caller is on.
#[derive(Debug)]
pub(crate) enum Forked {
    Child,
    Parent(Pid),
}

/// `clone(flags | SIGCHLD)` with no new stack: `fork(2)` semantics plus namespace flags.
///
/// Unlike `unshare(CLONE_NEWUSER)`, this puts only the *child* in the new namespaces, so the
/// parent (the jailer) keeps its host credentials and can write the child's id maps and
/// cgroup membership, as bubblewrap does.
#[allow(unsafe_code)]
pub(crate) fn clone_process(namespace_flags: libc::c_int) -> Result<Forked, Errno> {
    let flags = (namespace_flags | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: with a null stack the kernel gives the child a copy-on-write copy of the caller's
    // address space and stack, exactly like fork(2); no memory is shared, so no Rust aliasing
    // rule can be broken. The remaining pointer arguments (parent/child tid, tls) are null and
    // unused because no CLONE_*TID/CLONE_SETTLS flag is passed. Callers are single-threaded
    // (the jailer checks this) or, in `probe`, the child only calls `_exit`.
    let ret = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match ret {
        -1 => Err(Errno::last()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(Pid::from_raw(pid as libc::pid_t))),
    }
}

/// `_exit(2)`: leave a forked child without running atexit handlers or unwinding into code
/// that belongs to the parent.
#[allow(unsafe_code)]
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes no pointers and never returns.
    unsafe { libc::_exit(code) }
}

/// Bring the loopback interface of the current network namespace up (`SIOCSIFFLAGS`).
#[allow(unsafe_code)]
pub(crate) fn set_loopback_up() -> Result<(), Errno> {
    // SAFETY: socket(2) takes no pointers; the returned descriptor is owned by `sock` below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `ifreq` is a plain C struct/union for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the NUL-terminated name and writes `ifru_flags` inside `req`,
    // which lives for the duration of the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just filled the `ifru_flags` member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: SIOCSIFFLAGS only reads `req`, which is valid for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(2)`: add `MOUNT_ATTR_*` flags to the mount at `path` (and, if `recursive`,
/// to every mount below it: a plain `MS_REMOUNT|MS_BIND` would leave submounts writable).
#[allow(unsafe_code)]
pub(crate) fn mount_setattr(path: &CStr, set: u64, recursive: bool) -> Result<(), Errno> {
    let attr = MountAttr { attr_set: set, attr_clr: 0, propagation: 0, userns_fd: 0 };
    let flags = libc::AT_SYMLINK_NOFOLLOW as libc::c_uint | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: `path` is NUL-terminated and `attr` is a correctly sized `struct mount_attr`; both
    // outlive the call and the kernel only reads them.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// Whether the kernel has `mount_setattr(2)` (Linux 5.12), asked without touching any mount:
/// a call with an invalid size fails with `EINVAL` when the syscall exists, `ENOSYS` otherwise.
#[allow(unsafe_code)]
pub(crate) fn mount_setattr_supported() -> bool {
    // SAFETY: size 0 is rejected (EINVAL) before the kernel looks at the path or attr pointers,
    // which are null; nothing is read, written or changed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1 as libc::c_int,
            std::ptr::null::<libc::c_char>(),
            0 as libc::c_uint,
            std::ptr::null::<MountAttr>(),
            0usize,
        )
    };
    !(ret < 0 && Errno::last() == Errno::ENOSYS)
}

/// `open_tree(fd, "", OPEN_TREE_CLONE | AT_EMPTY_PATH [| AT_RECURSIVE])` (Linux 5.2): a detached
/// copy of the mount (and, if `recursive`, its submounts) rooted at the file or directory `fd`
/// refers to. It is attached later with [`move_mount`], possibly from another mount namespace:
/// unlike a path or `/proc/self/fd/N`, it needs no further lookup and no access to the
/// directories above it. Needs CAP_SYS_ADMIN in the user namespace owning the caller's mount
/// namespace. The descriptor is close-on-exec.
#[allow(unsafe_code)]
pub(crate) fn open_tree_clone(fd: BorrowedFd<'_>, recursive: bool) -> Result<OwnedFd, Errno> {
    let flags = OPEN_TREE_CLONE
        | OPEN_TREE_CLOEXEC
        | libc::AT_EMPTY_PATH as libc::c_uint
        | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: `fd` is a live descriptor borrowed for the call and the path is a NUL-terminated
    // empty string; the kernel only reads them and returns a new descriptor or -1.
    let ret = unsafe { libc::syscall(libc::SYS_open_tree, fd.as_raw_fd(), c"".as_ptr(), flags) };
    if ret < 0 {
        return Err(Errno::last());
    }
    let raw = libc::c_int::try_from(ret).map_err(|_| Errno::EBADF)?;
    // SAFETY: `raw` is the fresh descriptor open_tree just returned; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// `move_mount(tree, "", AT_FDCWD, to, MOVE_MOUNT_F_EMPTY_PATH)` (Linux 5.2): attach the
/// detached mount `tree` (from [`open_tree_clone`]) at the path `to` of the caller's mount
/// namespace.
#[allow(unsafe_code)]
pub(crate) fn move_mount(tree: BorrowedFd<'_>, to: &CStr) -> Result<(), Errno> {
    // SAFETY: `tree` is a live descriptor borrowed for the call; both paths are NUL-terminated
    // and outlive it; the kernel only reads them.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// Mark every descriptor from `first` up as close-on-exec (`close_range(CLOSE_RANGE_CLOEXEC)`,
/// Linux 5.11; older kernels: `fcntl(FD_CLOEXEC)` on each entry of `/proc/self/fd`), so nothing
/// the jailer or the agent had open reaches the sandboxed program.
#[allow(unsafe_code)]
pub(crate) fn cloexec_from(first: u32) -> Result<(), Errno> {
    // SAFETY: close_range takes no pointers; CLOSE_RANGE_CLOEXEC closes nothing, it only sets
    // FD_CLOEXEC, so no OwnedFd in this process is invalidated.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    if ret == 0 {
        return Ok(());
    }
    let errno = Errno::last();
    if errno != Errno::ENOSYS && errno != Errno::EINVAL {
        return Err(errno);
    }
    let entries = std::fs::read_dir("/proc/self/fd").map_err(|_| Errno::ENOENT)?;
    let fds: Vec<libc::c_int> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|fd| *fd >= first as libc::c_int)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD with an integer flag; a number that is not (or no longer) an open
        // descriptor just yields EBADF, which is ignored (e.g. the read_dir fd, now closed).
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// The kernel's Landlock ABI version (`landlock_create_ruleset(NULL, 0, VERSION)`).
#[allow(unsafe_code)]
pub(crate) fn landlock_abi() -> Result<i32, Errno> {
    // SAFETY: with LANDLOCK_CREATE_RULESET_VERSION the attr pointer must be NULL and size 0;
    // the call creates nothing and only returns an integer.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if ret < 0 { Err(Errno::last()) } else { Ok(ret as i32) }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drop every capability: the bounding set (so no later `execve` can regain any), the ambient
/// set, and the effective/permitted/inheritable sets.
#[allow(unsafe_code)]
pub(crate) fn drop_all_capabilities(last_cap: u32) -> Result<(), Errno> {
    for cap in 0..=last_cap {
        // SAFETY: prctl(PR_CAPBSET_DROP, cap) takes integers only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } < 0 {
            return Err(Errno::last());
        }
    }
    // SAFETY: integers only. EINVAL means the kernel predates ambient capabilities (< 4.3),
    // in which case there is no ambient set to clear.
    let ret = unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) };
    if ret < 0 && Errno::last() != Errno::EINVAL {
        return Err(Errno::last());
    }
    let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: version 3 capset reads one header and two data structs, which are live and
    // correctly laid out (#[repr(C)], matching <linux/capability.h>).
    if unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) } < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Install a classic-BPF seccomp filter on the calling thread (`PR_SET_SECCOMP`).
/// Requires `no_new_privs` (or CAP_SYS_ADMIN), which the caller sets first.
#[allow(unsafe_code)]
pub(crate) fn install_seccomp_filter(filter: &[libc::sock_filter]) -> Result<(), Errno> {
    let len = u16::try_from(filter.len()).map_err(|_| Errno::E2BIG)?;
    let prog = libc::sock_fprog { len, filter: filter.as_ptr().cast_mut() };
    // SAFETY: `prog` points at `filter`, which outlives the call; the kernel copies the program
    // and never writes through the pointer despite the `*mut` in the C declaration.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog as libc::c_ulong,
            0,
            0,
        )
    };
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// Reset every signal to its default disposition. Ignored signals survive `execve`, and the
/// Rust runtime ignores SIGPIPE, which would break `producer | head` in the job's scripts.
#[allow(unsafe_code)]
pub(crate) fn reset_signal_dispositions() {
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no code of ours in signal context. Errors (signals
        // reserved by libc, numbers above SIGRTMAX) are expected and harmless.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

/// One eBPF instruction (`struct bpf_insn`): opcode, registers (`dst` in the low nibble on
/// little-endian hosts, the high one on big-endian), offset, immediate.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BpfInsn {
    pub(crate) code: u8,
    pub(crate) regs: u8,
    pub(crate) off: i16,
    pub(crate) imm: i32,
}

/// The `BPF_PROG_LOAD` member of `union bpf_attr` up to `expected_attach_type` (stable ABI;
/// the kernel zero-fills the fields after the size we pass).
#[repr(C)]
struct BpfProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH` member of `union bpf_attr` up to `replace_bpf_fd` (stable ABI).
#[repr(C)]
struct BpfProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;

/// `bpf(BPF_PROG_LOAD)`: load `insns` as a program of `prog_type` for `attach_type` (licence
/// `Apache-2.0`, the project's: the programs call no GPL-only helper). On a verifier refusal the
/// verifier's log (its last lines) comes back with the error.
#[allow(unsafe_code)]
pub(crate) fn bpf_prog_load(prog_type: u32, attach_type: u32, insns: &[BpfInsn]) -> Result<OwnedFd, (Errno, String)> {
    let load = |log: &mut [u8]| {
        let mut attr = BpfProgLoadAttr {
            prog_type,
            insn_cnt: u32::try_from(insns.len()).unwrap_or(u32::MAX),
            insns: insns.as_ptr() as u64,
            license: c"Apache-2.0".as_ptr() as u64,
            log_level: u32::from(!log.is_empty()),
            log_size: u32::try_from(log.len()).unwrap_or(0),
            log_buf: if log.is_empty() { 0 } else { log.as_mut_ptr() as u64 },
            kern_version: 0,
            prog_flags: 0,
            prog_name: [0; 16],
            prog_ifindex: 0,
            expected_attach_type: attach_type,
        };
        for (dst, src) in attr.prog_name.iter_mut().zip(b"keyward_egress") {
            *dst = *src;
        }
        // SAFETY: `attr` is a correctly laid out prefix of `union bpf_attr` whose size we pass;
        // the instructions, the licence string and the log buffer it points to outlive the call.
        // The kernel reads the instructions and licence and writes at most `log_size` bytes
        // into the log buffer.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &mut attr as *mut BpfProgLoadAttr,
                std::mem::size_of::<BpfProgLoadAttr>(),
            )
        };
        if ret < 0 {
            return Err(Errno::last());
        }
        let raw = libc::c_int::try_from(ret).map_err(|_| Errno::EBADF)?;
        // SAFETY: `raw` is the fresh program descriptor bpf just returned; nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    };
    match load(&mut []) {
        Ok(fd) => Ok(fd),
        Err(errno @ (Errno::EACCES | Errno::EINVAL)) => {
            // Again with a log, for the verifier's reason.
            let mut log = vec![0u8; 64 * 1024];
            let _ = load(&mut log);
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0').trim();
            let tail: Vec<&str> = text.lines().rev().take(3).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err((errno, tail.join(" / ")))
        }
        Err(errno) => Err((errno, String::new())),
    }
}

/// `bpf(BPF_PROG_ATTACH)`: attach `prog` to the cgroup (v2 directory) `cgroup` at `attach_type`,
/// with `BPF_F_ALLOW_MULTI` so that programs of parent cgroups run too.
#[allow(unsafe_code)]
pub(crate) fn bpf_prog_attach(cgroup: BorrowedFd<'_>, prog: BorrowedFd<'_>, attach_type: u32) -> Result<(), Errno> {
    const BPF_F_ALLOW_MULTI: u32 = 2;
    let attr = BpfProgAttachAttr {
        target_fd: u32::try_from(cgroup.as_raw_fd()).map_err(|_| Errno::EBADF)?,
        attach_bpf_fd: u32::try_from(prog.as_raw_fd()).map_err(|_| Errno::EBADF)?,
        attach_type,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    // SAFETY: `attr` is a correctly laid out prefix of `union bpf_attr` whose size we pass; both
    // descriptors are borrowed live for the call; the kernel only reads `attr`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const BpfProgAttachAttr,
            std::mem::size_of::<BpfProgAttachAttr>(),
        )
    };
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}
