//! The egress filter: with the host's network, a job may not reach the cloud metadata services
//! (`169.254.169.254`, `fd00:ec2::254`, …), which hand out the *host's* credentials to anyone
//! on the host who asks (security review L4).
//!
//! Why cgroup BPF: the job's processes all live in one cgroup (v2) that the jailer creates and
//! that nothing inside can leave, and every socket is stamped with its creator's cgroup. Programs
//! attached there see every connection and packet of the job and of nothing else: no host-wide
//! firewall rule to install, clean up or collide with, no external tool, and they vanish with
//! the cgroup. Five tiny programs, generated here and checked by the kernel's verifier:
//!
//! - `connect4`/`connect6`: `connect()` to a blocked address fails with `EPERM` (TCP and UDP,
//!   IPv4-mapped IPv6 included);
//! - `sendmsg4`/`sendmsg6`: so does an unconnected UDP `sendto()`;
//! - `egress` (cgroup skb): any other packet to a blocked address is dropped (the backstop for
//!   paths without a socket-address hook, e.g. TCP Fast Open).
//!
//! Needs root (CAP_BPF and CAP_NET_ADMIN), a cgroup v2 hierarchy (pure v2, or the `unified`
//! mount of a hybrid host) and Linux ≥ 5.8 for direct packet access from cgroup skb programs.
//! The job cannot detach them: seccomp denies `bpf`, and it has no capability on the host.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;

use crate::sys::{self, BpfInsn};

/// The addresses the agent blocks by default with the host's network: the cloud metadata and
/// credential endpoints reachable from an instance.
pub const METADATA_ADDRESSES: [IpAddr; 5] = [
    // AWS, GCP, Azure, OCI, OpenStack, DigitalOcean, … instance metadata (IMDS).
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    // AWS IMDS over IPv6 (Nitro).
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    // AWS ECS task-role credentials.
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
    // AWS EKS Pod Identity agent.
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 23)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)),
];

const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_CGROUP_INET_EGRESS: u32 = 1;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_CGROUP_INET6_CONNECT: u32 = 11;
const BPF_CGROUP_UDP4_SENDMSG: u32 = 14;
const BPF_CGROUP_UDP6_SENDMSG: u32 = 15;

/// Attaching the filter failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EgressError {
    #[error("open cgroup {path:?}: {source}")]
    Cgroup {
        path: std::path::PathBuf,
        #[source]
        source: Errno,
    },
    #[error("load the {hook} program: {errno}{}{}", if .verifier.is_empty() { "" } else { ": " }, .verifier)]
    Load { hook: &'static str, errno: Errno, verifier: String },
    #[error("attach the {hook} program: {errno}")]
    Attach { hook: &'static str, errno: Errno },
}

/// Attach the filter for `blocked` to the cgroup v2 directory `cgroup`. Returns the layer's
/// description. Programs stay attached until the cgroup is removed.
pub(crate) fn attach(cgroup: &Path, blocked: &[IpAddr]) -> Result<String, EgressError> {
    let dir = open(cgroup, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|source| EgressError::Cgroup { path: cgroup.to_owned(), source })?;
    for program in programs(blocked) {
        let fd: OwnedFd = sys::bpf_prog_load(program.prog_type, program.attach_type, &program.insns)
            .map_err(|(errno, verifier)| EgressError::Load { hook: program.hook, errno, verifier })?;
        sys::bpf_prog_attach(dir.as_fd(), fd.as_fd(), program.attach_type)
            .map_err(|errno| EgressError::Attach { hook: program.hook, errno })?;
    }
    let list: Vec<String> = blocked.iter().map(IpAddr::to_string).collect();
    Ok(format!("egress filter (cgroup bpf): {} refused", list.join(", ")))
}

/// One program and where it attaches.
#[derive(Debug)]
struct Program {
    hook: &'static str,
    prog_type: u32,
    attach_type: u32,
    insns: Vec<BpfInsn>,
}

fn programs(blocked: &[IpAddr]) -> Vec<Program> {
    let v4: Vec<[u8; 4]> = blocked
        .iter()
        .filter_map(|a| match a {
            IpAddr::V4(a) => Some(a.octets()),
            IpAddr::V6(_) => None,
        })
        .collect();
    let v6: Vec<[u8; 16]> = blocked
        .iter()
        .filter_map(|a| match a {
            IpAddr::V6(a) => Some(a.octets()),
            IpAddr::V4(_) => None,
        })
        .collect();
    // A dual-stack socket reaches an IPv4 address through its mapped form, ::ffff:a.b.c.d.
    let v6_and_mapped: Vec<[u8; 16]> =
        v6.iter().copied().chain(v4.iter().map(|a| Ipv4Addr::from(*a).to_ipv6_mapped().octets())).collect();
    let sock_addr =
        |hook, attach_type, insns| Program { hook, prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR, attach_type, insns };
    vec![
        sock_addr("connect4", BPF_CGROUP_INET4_CONNECT, sock_addr_v4(&v4)),
        sock_addr("sendmsg4", BPF_CGROUP_UDP4_SENDMSG, sock_addr_v4(&v4)),
        sock_addr("connect6", BPF_CGROUP_INET6_CONNECT, sock_addr_v6(&v6_and_mapped)),
        sock_addr("sendmsg6", BPF_CGROUP_UDP6_SENDMSG, sock_addr_v6(&v6_and_mapped)),
        Program {
            hook: "egress",
            prog_type: BPF_PROG_TYPE_CGROUP_SKB,
            attach_type: BPF_CGROUP_INET_EGRESS,
            insns: skb_egress(&v4, &v6),
        },
    ]
}

// ---------------------------------------------------------------------------------------------
// A minimal eBPF assembler: the handful of instructions the programs use.

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;
const R6: u8 = 6;
const R7: u8 = 7;
const R8: u8 = 8;
const R9: u8 = 9;

/// `struct bpf_sock_addr`: `user_ip4` and `user_ip6[4]` (network byte order).
const SOCK_ADDR_USER_IP4: i16 = 4;
const SOCK_ADDR_USER_IP6: i16 = 8;
/// `struct __sk_buff`: `data` and `data_end` (direct packet access).
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
    let regs = if cfg!(target_endian = "little") { dst | (src << 4) } else { (dst << 4) | src };
    BpfInsn { code, regs, off, imm }
}

/// `dst = *(u32 *)(src + off)`, zero-extended.
fn load_word(dst: u8, src: u8, off: i16) -> BpfInsn {
    insn(0x61, dst, src, off, 0)
}

/// `dst = *(u8 *)(src + off)`.
fn load_byte(dst: u8, src: u8, off: i16) -> BpfInsn {
    insn(0x71, dst, src, off, 0)
}

/// `dst = imm` (64-bit).
fn mov_imm(dst: u8, imm: i32) -> BpfInsn {
    insn(0xb7, dst, 0, 0, imm)
}

/// `dst = word`, zero-extended (a 32-bit move), so it compares equal to a zero-extended load.
fn mov_word(dst: u8, word: [u8; 4]) -> BpfInsn {
    insn(0xb4, dst, 0, 0, i32::from_ne_bytes(word))
}

/// `dst = src` (64-bit).
fn mov_reg(dst: u8, src: u8) -> BpfInsn {
    insn(0xbf, dst, src, 0, 0)
}

/// `dst += imm` (64-bit).
fn add_imm(dst: u8, imm: i32) -> BpfInsn {
    insn(0x07, dst, 0, 0, imm)
}

/// `dst >>= imm` (64-bit, logical).
fn rsh_imm(dst: u8, imm: i32) -> BpfInsn {
    insn(0x77, dst, 0, 0, imm)
}

/// `if dst != src goto +off`.
fn jne_reg(dst: u8, src: u8, off: i16) -> BpfInsn {
    insn(0x5d, dst, src, off, 0)
}

/// `if dst > src goto +off` (unsigned).
fn jgt_reg(dst: u8, src: u8, off: i16) -> BpfInsn {
    insn(0x2d, dst, src, off, 0)
}

/// `if dst != imm goto +off`.
fn jne_imm(dst: u8, imm: i32, off: i16) -> BpfInsn {
    insn(0x55, dst, 0, off, imm)
}

/// `goto +off`.
fn ja(off: i16) -> BpfInsn {
    insn(0x05, 0, 0, off, 0)
}

fn exit() -> BpfInsn {
    insn(0x95, 0, 0, 0, 0)
}

/// `r0 = 0; exit`: refuse.
fn deny() -> [BpfInsn; 2] {
    [mov_imm(R0, 0), exit()]
}

/// One block per address: compare each word with the address's; on the first mismatch jump
/// past the block; when all match, refuse.
fn compare_block(registers: &[u8], words: &[[u8; 4]]) -> Vec<BpfInsn> {
    let mut block = Vec::with_capacity(words.len() * 2 + 2);
    let len = words.len() * 2 + 2;
    for (i, (register, word)) in registers.iter().zip(words).enumerate() {
        block.push(mov_word(R6, *word));
        // After this jump: the rest of the block.
        let rest = len - (2 * i + 2);
        block.push(jne_reg(*register, R6, i16::try_from(rest).unwrap_or(i16::MAX)));
    }
    block.extend(deny());
    block
}

fn words4(address: &[u8; 4]) -> [[u8; 4]; 1] {
    [*address]
}

fn words16(address: &[u8; 16]) -> [[u8; 4]; 4] {
    let mut words = [[0u8; 4]; 4];
    for (word, chunk) in words.iter_mut().zip(address.chunks_exact(4)) {
        word.copy_from_slice(chunk);
    }
    words
}

/// `connect4`/`sendmsg4`: refuse when `user_ip4` is blocked.
fn sock_addr_v4(blocked: &[[u8; 4]]) -> Vec<BpfInsn> {
    let mut insns = vec![mov_imm(R0, 1), load_word(R2, R1, SOCK_ADDR_USER_IP4)];
    for address in blocked {
        insns.extend(compare_block(&[R2], &words4(address)));
    }
    insns.push(exit());
    insns
}

/// `connect6`/`sendmsg6`: refuse when `user_ip6` is blocked.
fn sock_addr_v6(blocked: &[[u8; 16]]) -> Vec<BpfInsn> {
    let mut insns = vec![mov_imm(R0, 1)];
    for (i, register) in [R2, R3, R4, R5].into_iter().enumerate() {
        insns.push(load_word(register, R1, SOCK_ADDR_USER_IP6 + 4 * i as i16));
    }
    for address in blocked {
        insns.extend(compare_block(&[R2, R3, R4, R5], &words16(address)));
    }
    insns.push(exit());
    insns
}

/// The skb backstop: the packet starts at its IP header; drop it when its destination is
/// blocked. Bounds are checked before each read, as the verifier demands.
///
/// Layout: header (9 instructions), the IPv4 part, the IPv6 part, and a final `exit` (allow)
/// that every "not blocked" path jumps to.
fn skb_egress(v4: &[[u8; 4]], v6: &[[u8; 16]]) -> Vec<BpfInsn> {
    let v4_blocks: Vec<BpfInsn> = v4.iter().flat_map(|a| compare_block(&[R7], &words4(a))).collect();
    let v6_blocks: Vec<BpfInsn> = v6.iter().flat_map(|a| compare_block(&[R5, R7, R8, R9], &words16(a))).collect();
    let header_len = 9;
    let v4_len = 4 + v4_blocks.len() + 1;
    let v6_len = 8 + v6_blocks.len();
    let end = header_len + v4_len + v6_len;
    let off = |n: usize| i16::try_from(n).unwrap_or(i16::MAX);
    // The offset of a jump at `at` to the final `exit`.
    let to_end = |at: usize| off(end.saturating_sub(at + 1));
    let mut insns = Vec::with_capacity(end + 1);
    insns.extend([
        mov_imm(R0, 1),
        load_word(R2, R1, SKB_DATA),
        load_word(R3, R1, SKB_DATA_END),
        mov_reg(R4, R2),
        add_imm(R4, 1),
        jgt_reg(R4, R3, to_end(5)),
        load_byte(R5, R2, 0),
        rsh_imm(R5, 4),
        // Not IPv4: on to the IPv6 part.
        jne_imm(R5, 4, off(v4_len)),
    ]);
    insns.extend([mov_reg(R4, R2), add_imm(R4, 20)]);
    insns.push(jgt_reg(R4, R3, to_end(insns.len())));
    insns.push(load_word(R7, R2, 16));
    insns.extend(v4_blocks);
    insns.push(ja(to_end(insns.len())));
    // Not IPv6 either: allow.
    insns.push(jne_imm(R5, 6, to_end(insns.len())));
    insns.extend([mov_reg(R4, R2), add_imm(R4, 40)]);
    insns.push(jgt_reg(R4, R3, to_end(insns.len())));
    insns.extend([load_word(R5, R2, 24), load_word(R7, R2, 28), load_word(R8, R2, 32), load_word(R9, R2, 36)]);
    insns.extend(v6_blocks);
    debug_assert_eq!(insns.len(), end);
    insns.push(exit());
    insns
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny interpreter for the instructions the assembler emits, so the programs' logic is
    /// checked here; the kernel's verifier and the sandbox tests check the rest.
    fn run(insns: &[BpfInsn], memory: &[u8], data: Option<(usize, usize)>) -> u64 {
        let mut r = [0u64; 11];
        // r1 points at the context; packet pointers are offsets into `memory` too.
        let mut pc = 0usize;
        let reg = |i: &BpfInsn| {
            if cfg!(target_endian = "little") { (i.regs & 0xf, i.regs >> 4) } else { (i.regs >> 4, i.regs & 0xf) }
        };
        let read = |addr: u64, n: usize| -> u64 {
            let a = addr as usize;
            let bytes = &memory[a..a + n];
            let mut word = [0u8; 8];
            word[..n].copy_from_slice(bytes);
            u64::from_ne_bytes(word)
        };
        for _ in 0..10_000 {
            let i = insns[pc];
            let (dst, src) = reg(&i);
            let (dst, src) = (dst as usize, src as usize);
            pc += 1;
            let jump = |pc: usize, off: i16| (pc as i64 + i64::from(off)) as usize;
            match i.code {
                0x61 | 0x71 => {
                    let n = if i.code == 0x61 { 4 } else { 1 };
                    let base = r[src];
                    let value = match data {
                        Some((start, _)) if src == 1 && i.off == SKB_DATA => start as u64,
                        Some((_, end)) if src == 1 && i.off == SKB_DATA_END => end as u64,
                        _ => read(base + i.off as u64, n),
                    };
                    r[dst] = value;
                }
                0xb7 => r[dst] = i.imm as i64 as u64,
                0xb4 => r[dst] = u64::from(i.imm as u32),
                0xbf => r[dst] = r[src],
                0x07 => r[dst] = r[dst].wrapping_add(i.imm as i64 as u64),
                0x77 => r[dst] >>= i.imm,
                0x5d if r[dst] != r[src] => pc = jump(pc, i.off),
                0x2d if r[dst] > r[src] => pc = jump(pc, i.off),
                0x55 if r[dst] != i.imm as i64 as u64 => pc = jump(pc, i.off),
                0x05 => pc = jump(pc, i.off),
                0x5d | 0x2d | 0x55 => {}
                0x95 => return r[0],
                other => panic!("unknown opcode {other:#x}"),
            }
        }
        panic!("did not exit");
    }

    fn sock_addr_ctx(ip4: [u8; 4], ip6: [u8; 16]) -> Vec<u8> {
        let mut ctx = vec![0u8; 64];
        ctx[4..8].copy_from_slice(&ip4);
        ctx[8..24].copy_from_slice(&ip6);
        ctx
    }

    fn blocked() -> Vec<IpAddr> {
        METADATA_ADDRESSES.to_vec()
    }

    #[test]
    fn socket_hooks_refuse_exactly_the_blocked_addresses() {
        let programs = programs(&blocked());
        let connect4 = &programs[0].insns;
        let connect6 = &programs[2].insns;
        assert_eq!(run(connect4, &sock_addr_ctx([169, 254, 169, 254], [0; 16]), None), 0);
        assert_eq!(run(connect4, &sock_addr_ctx([169, 254, 170, 2], [0; 16]), None), 0);
        assert_eq!(run(connect4, &sock_addr_ctx([169, 254, 169, 253], [0; 16]), None), 1, "DNS on AWS stays");
        assert_eq!(run(connect4, &sock_addr_ctx([127, 0, 0, 1], [0; 16]), None), 1);
        let v6 = |a: &str| a.parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(run(connect6, &sock_addr_ctx([0; 4], v6("fd00:ec2::254")), None), 0);
        assert_eq!(run(connect6, &sock_addr_ctx([0; 4], v6("::ffff:169.254.169.254")), None), 0, "mapped");
        assert_eq!(run(connect6, &sock_addr_ctx([0; 4], v6("fd00:ec2::253")), None), 1);
        assert_eq!(run(connect6, &sock_addr_ctx([0; 4], v6("::1")), None), 1);
    }

    #[test]
    fn the_packet_backstop_drops_exactly_the_blocked_destinations() {
        let egress = &programs(&blocked())[4].insns;
        // Context (96 bytes, data/data_end come from the interpreter), then the packet.
        let packet = |header: &[u8]| {
            let mut memory = vec![0u8; 96];
            memory.extend_from_slice(header);
            let end = memory.len();
            (memory, (96, end))
        };
        let mut v4 = vec![0x45u8; 1];
        v4.extend([0u8; 15]);
        v4.extend([169, 254, 169, 254]);
        let (memory, data) = packet(&v4);
        assert_eq!(run(egress, &memory, Some(data)), 0);
        v4[19] = 253;
        let (memory, data) = packet(&v4);
        assert_eq!(run(egress, &memory, Some(data)), 1);
        let (memory, data) = packet(&v4[..19]);
        assert_eq!(run(egress, &memory, Some(data)), 1, "short packet passes untouched");
        let mut v6 = vec![0x60u8];
        v6.extend([0u8; 23]);
        v6.extend("fd00:ec2::254".parse::<Ipv6Addr>().unwrap().octets());
        let (memory, data) = packet(&v6);
        assert_eq!(run(egress, &memory, Some(data)), 0);
        *v6.last_mut().unwrap() = 0x55;
        let (memory, data) = packet(&v6);
        assert_eq!(run(egress, &memory, Some(data)), 1);
        let (memory, data) = packet(&[0x10]);
        assert_eq!(run(egress, &memory, Some(data)), 1, "neither version");
    }
}
