//! The seccomp deny list: syscalls the sandboxed program never needs and that attack the kernel
//! or the sandbox itself.
//!
//! Why it exists: namespaces and dropped capabilities already make most of these fail, but each
//! one is a large, historically buggy kernel surface reachable from an unprivileged user
//! namespace. A deny list (EPERM) keeps Terraform and its providers working while removing:
//! - debugging other processes: `ptrace`, `process_vm_readv/writev`, `pidfd_getfd`,
//!   `process_madvise`;
//! - changing the sandbox: `mount`, `umount2`, `pivot_root`, the new mount API (`fsopen`,
//!   `fsconfig`, `fsmount`, `fspick`, `move_mount`, `open_tree`, `mount_setattr`), `setns`,
//!   `unshare`, `clone` with any `CLONE_NEW*` flag, `clone3` (its flags live in memory a
//!   classic-BPF filter cannot read, so it fails with ENOSYS and libc falls back to `clone`);
//! - host administration: `swapon/off`, `reboot`, `kexec_load`, `kexec_file_load`,
//!   `init_module`, `finit_module`, `delete_module`, `acct`, `quotactl(_fd)`,
//!   `lookup_dcookie`, `iopl`, `ioperm`, `uselib`;
//! - large attack surfaces: `bpf`, `perf_event_open`, `userfaultfd`, `io_uring_*`, the kernel
//!   keyring (`keyctl`, `add_key`, `request_key`: also shared per uid across jobs);
//! - file-handle tricks that bypass path checks: `open_by_handle_at`, `name_to_handle_at`;
//! - terminal injection: `ioctl(TIOCSTI)`, `ioctl(TIOCLINUX)` (the command is compared on its
//!   low 32 bits, as the kernel reads it, so high bits cannot smuggle it past).
//!
//! The filter first checks the architecture in `seccomp_data` and kills the process on any
//! other (a 32-bit `int 0x80` call would otherwise use a different syscall table); on x86_64 it
//! also kills x32-ABI syscall numbers. It is installed last, right before `execve`.

use crate::sys;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Offsets into `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG0_LO: u32 = 16;
const OFF_ARG1_LO: u32 = 24;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;

const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const BPF_JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const BPF_JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// `CLONE_NEW*` flags refused in `clone`'s first argument (`CLONE_NEWTIME` overlaps the exit
/// signal bits of `clone` and is covered by denying `unshare` and `clone3`).
const CLONE_NAMESPACES: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32;

const TIOCSTI: u32 = 0x5412;
const TIOCLINUX: u32 = 0x541C;

/// Installing the filter failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SeccompError {
    #[cfg_attr(any(target_arch = "x86_64", target_arch = "aarch64"), allow(dead_code))]
    #[error("not supported on this architecture (x86_64 and aarch64 only)")]
    UnsupportedArch,
    #[error("installing the filter: {0}")]
    Install(#[source] nix::Error),
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn denied() -> Vec<libc::c_long> {
    let mut list = vec![
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_pidfd_getfd,
        libc::SYS_process_madvise,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_mount_setattr,
        libc::SYS_setns,
        libc::SYS_unshare,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_reboot,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_quotactl_fd,
        libc::SYS_lookup_dcookie,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
    ];
    #[cfg(target_arch = "x86_64")]
    list.extend([libc::SYS_iopl, libc::SYS_ioperm, libc::SYS_uselib]);
    list
}

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The BPF program for this architecture.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn filter() -> Vec<libc::sock_filter> {
    let eperm = RET_ERRNO | libc::EPERM as u32;
    let mut p = vec![
        stmt(BPF_LD_W_ABS, OFF_ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(BPF_RET_K, RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, OFF_NR),
    ];
    #[cfg(target_arch = "x86_64")]
    p.extend([jump(BPF_JGE_K, 0x4000_0000, 0, 1), stmt(BPF_RET_K, RET_KILL_PROCESS)]);
    // Each check is "if nr == N return ERRNO, else fall through": no long jumps to get wrong.
    for nr in denied() {
        p.extend([jump(BPF_JEQ_K, nr as u32, 0, 1), stmt(BPF_RET_K, eperm)]);
    }
    p.extend([jump(BPF_JEQ_K, libc::SYS_clone3 as u32, 0, 1), stmt(BPF_RET_K, RET_ERRNO | libc::ENOSYS as u32)]);
    // clone: refuse namespace flags. The accumulator still holds nr when not clone.
    p.extend([
        jump(BPF_JEQ_K, libc::SYS_clone as u32, 0, 4),
        stmt(BPF_LD_W_ABS, OFF_ARG0_LO),
        jump(BPF_JSET_K, CLONE_NAMESPACES, 0, 1),
        stmt(BPF_RET_K, eperm),
        stmt(BPF_RET_K, RET_ALLOW),
    ]);
    // ioctl: refuse TIOCSTI and TIOCLINUX.
    p.extend([
        jump(BPF_JEQ_K, libc::SYS_ioctl as u32, 0, 6),
        stmt(BPF_LD_W_ABS, OFF_ARG1_LO),
        jump(BPF_JEQ_K, TIOCSTI, 0, 1),
        stmt(BPF_RET_K, eperm),
        jump(BPF_JEQ_K, TIOCLINUX, 0, 1),
        stmt(BPF_RET_K, eperm),
        stmt(BPF_RET_K, RET_ALLOW),
    ]);
    p.push(stmt(BPF_RET_K, RET_ALLOW));
    p
}

/// Install the deny list on the calling process (requires `no_new_privs`).
pub(crate) fn install() -> Result<(), SeccompError> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        sys::install_seccomp_filter(&filter()).map_err(SeccompError::Install)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        Err(SeccompError::UnsupportedArch)
    }
}

/// Whether this build has a table for the running architecture.
pub(crate) fn arch_supported() -> bool {
    cfg!(any(target_arch = "x86_64", target_arch = "aarch64"))
}

#[cfg(all(test, any(target_arch = "x86_64", target_arch = "aarch64")))]
mod tests {
    use super::*;

    /// A classic-BPF interpreter for the subset the filter uses, run against `seccomp_data`.
    /// Test-only: a panic here is a failed test.
    #[allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::panic)]
    fn run(prog: &[libc::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = Vec::new();
        data.extend(nr.to_ne_bytes());
        data.extend(arch.to_ne_bytes());
        data.extend(0u64.to_ne_bytes());
        for a in args {
            data.extend(a.to_ne_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let ins = prog[pc];
            pc += 1;
            match ins.code {
                BPF_LD_W_ABS => {
                    let at = ins.k as usize;
                    acc = u32::from_ne_bytes(data[at..at + 4].try_into().unwrap());
                }
                BPF_RET_K => return ins.k,
                BPF_JEQ_K | BPF_JGE_K | BPF_JSET_K => {
                    let taken = match ins.code {
                        BPF_JEQ_K => acc == ins.k,
                        BPF_JGE_K => acc >= ins.k,
                        _ => acc & ins.k != 0,
                    };
                    pc += usize::from(if taken { ins.jt } else { ins.jf });
                }
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;

    #[test]
    fn denies_the_list_and_allows_the_rest() {
        let prog = filter();
        for nr in denied() {
            assert_eq!(run(&prog, AUDIT_ARCH, nr as u32, [0; 6]), EPERM, "syscall {nr}");
        }
        // execveat too: programs (and runtimes) may execute by descriptor.
        for nr in
            [libc::SYS_read, libc::SYS_write, libc::SYS_execve, libc::SYS_execveat, libc::SYS_openat, libc::SYS_mmap]
        {
            assert_eq!(run(&prog, AUDIT_ARCH, nr as u32, [0; 6]), RET_ALLOW, "syscall {nr}");
        }
        assert_eq!(run(&prog, AUDIT_ARCH, libc::SYS_clone3 as u32, [0; 6]), RET_ERRNO | libc::ENOSYS as u32);
    }

    #[test]
    fn foreign_architectures_are_killed() {
        let prog = filter();
        assert_eq!(run(&prog, 0x4000_0003 /* i386 */, libc::SYS_read as u32, [0; 6]), RET_KILL_PROCESS);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(run(&prog, AUDIT_ARCH, 0x4000_0000 | libc::SYS_ptrace as u32, [0; 6]), RET_KILL_PROCESS);
    }

    #[test]
    fn clone_with_namespace_flags_is_denied() {
        let prog = filter();
        let fork_like = (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD) as u64;
        let threads = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND | libc::CLONE_FS) as u64;
        assert_eq!(run(&prog, AUDIT_ARCH, libc::SYS_clone as u32, [fork_like, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(run(&prog, AUDIT_ARCH, libc::SYS_clone as u32, [threads, 0, 0, 0, 0, 0]), RET_ALLOW);
        for flag in [libc::CLONE_NEWUSER, libc::CLONE_NEWNS, libc::CLONE_NEWPID, libc::CLONE_NEWNET] {
            let args = [fork_like | flag as u64, 0, 0, 0, 0, 0];
            assert_eq!(run(&prog, AUDIT_ARCH, libc::SYS_clone as u32, args), EPERM);
        }
    }

    #[test]
    fn tiocsti_is_denied_even_with_high_bits_set() {
        let prog = filter();
        let ioctl = libc::SYS_ioctl as u32;
        assert_eq!(run(&prog, AUDIT_ARCH, ioctl, [1, TIOCSTI as u64, 0, 0, 0, 0]), EPERM);
        assert_eq!(run(&prog, AUDIT_ARCH, ioctl, [1, 0xffff_ffff_0000_0000 | TIOCSTI as u64, 0, 0, 0, 0]), EPERM);
        assert_eq!(run(&prog, AUDIT_ARCH, ioctl, [1, TIOCLINUX as u64, 0, 0, 0, 0]), EPERM);
        assert_eq!(run(&prog, AUDIT_ARCH, ioctl, [1, libc::TCGETS, 0, 0, 0, 0]), RET_ALLOW);
    }
}
