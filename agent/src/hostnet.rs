//! What `--network host` requires of the host before the agent takes a job (security review L4).
//!
//! A job on the host's network shares the host's abstract Unix sockets (D-Bus, containerd, X11,
//! …) and can ask the cloud metadata service for the host's credentials. Two sandbox layers keep
//! it from both: Landlock's scopes (ABI 6, Linux 6.12) and the egress filter (cgroup BPF, root
//! and cgroup v2). The agent checks both at start and refuses to start without them, unless the
//! operator explicitly accepts the gap (`--allow-host-abstract-sockets`,
//! `--allow-metadata-access`), which it then says loudly at start.

use std::net::IpAddr;

use keyward_sandbox::Layer;

/// What the operator allowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allowances {
    /// `--allow-host-abstract-sockets`: run host-network jobs on a kernel without Landlock scopes.
    pub abstract_sockets: bool,
    /// `--allow-metadata-access`: do not block the metadata service for jobs.
    pub metadata: bool,
}

/// What host-network jobs run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNetwork {
    /// The addresses the jobs' egress filter refuses (empty: no filter).
    pub blocked: Vec<IpAddr>,
    /// Layers the jailer may do without.
    pub allow_missing: Vec<Layer>,
    /// Warnings for the agent's log.
    pub warnings: Vec<String>,
}

/// The agent cannot run host-network jobs safely here.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostNetworkError {
    /// No Landlock scopes.
    #[error(
        "--network host needs Landlock scopes (ABI 6, Linux 6.12 or later) so that jobs cannot connect to the \
         host's abstract Unix sockets; this host: {0}. Upgrade the kernel, use --network none, or accept the \
         risk with --allow-host-abstract-sockets"
    )]
    NoScope(String),
    /// The egress filter cannot be attached.
    #[error(
        "--network host: cannot block the cloud metadata service ({addresses}) for jobs: {why}. Run the agent \
         as root on a host with cgroup v2 (a hybrid host's /sys/fs/cgroup/unified counts), use --network none, \
         or let jobs reach the metadata service with --allow-metadata-access"
    )]
    NoEgressFilter {
        /// The addresses.
        addresses: String,
        /// Why.
        why: String,
    },
}

/// Decides from the probes' answers (`scope`: [`keyward_sandbox::landlock_scope`], `filter`:
/// [`keyward_sandbox::egress_filter`]) and the operator's `allowed` gaps.
pub fn check(
    scope: Result<String, String>,
    filter: impl FnOnce(&[IpAddr]) -> Result<String, String>,
    allowed: Allowances,
) -> Result<HostNetwork, HostNetworkError> {
    let mut plan = HostNetwork { blocked: Vec::new(), allow_missing: Vec::new(), warnings: Vec::new() };
    match (scope, allowed.abstract_sockets) {
        (Ok(_), false) => {}
        (Err(why), false) => return Err(HostNetworkError::NoScope(why)),
        (scope, true) => {
            plan.allow_missing.push(Layer::LandlockScope);
            if let Err(why) = scope {
                plan.warnings.push(format!(
                    "--allow-host-abstract-sockets: jobs on the host's network can connect to the host's abstract \
                     Unix sockets ({why})"
                ));
            }
        }
    }
    let addresses = keyward_sandbox::METADATA_ADDRESSES;
    if allowed.metadata {
        plan.warnings.push(format!(
            "--allow-metadata-access: jobs can reach the cloud metadata service ({}) and with it this host's own \
             credentials",
            list(&addresses)
        ));
        return Ok(plan);
    }
    filter(&addresses).map_err(|why| HostNetworkError::NoEgressFilter { addresses: list(&addresses), why })?;
    plan.blocked = addresses.to_vec();
    Ok(plan)
}

fn list(addresses: &[IpAddr]) -> String {
    addresses.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable(_: &[IpAddr]) -> Result<String, String> {
        Err("bpf: Operation not permitted".to_owned())
    }

    fn available(_: &[IpAddr]) -> Result<String, String> {
        Ok("cgroup bpf".to_owned())
    }

    #[test]
    fn a_capable_host_blocks_the_metadata_service_and_requires_the_scope() {
        let plan = check(Ok("abi 7".into()), available, Allowances::default()).expect("runs");
        assert!(plan.blocked.contains(&"169.254.169.254".parse().expect("ip")));
        assert!(plan.blocked.contains(&"fd00:ec2::254".parse().expect("ip")));
        assert!(plan.allow_missing.is_empty() && plan.warnings.is_empty(), "{plan:?}");
    }

    #[test]
    fn without_the_scope_the_agent_refuses_unless_allowed() {
        let refused = check(Err("landlock abi 5".into()), available, Allowances::default()).expect_err("refused");
        let message = refused.to_string();
        assert!(message.contains("Linux 6.12") && message.contains("--allow-host-abstract-sockets"), "{message}");
        let allowed = Allowances { abstract_sockets: true, metadata: false };
        let plan = check(Err("landlock abi 5".into()), available, allowed).expect("allowed");
        assert_eq!(plan.allow_missing, vec![Layer::LandlockScope]);
        assert!(plan.warnings[0].contains("abstract Unix sockets"), "{:?}", plan.warnings);
    }

    #[test]
    fn without_the_filter_the_agent_refuses_unless_metadata_access_is_allowed() {
        let refused = check(Ok("abi 7".into()), unavailable, Allowances::default()).expect_err("refused");
        let message = refused.to_string();
        assert!(message.contains("169.254.169.254") && message.contains("--allow-metadata-access"), "{message}");
        assert!(message.contains("bpf: Operation not permitted"), "{message}");
        let allowed = Allowances { abstract_sockets: false, metadata: true };
        let plan = check(Ok("abi 7".into()), unavailable, allowed).expect("allowed");
        assert!(plan.blocked.is_empty());
        assert!(plan.warnings[0].contains("can reach the cloud metadata service"), "{:?}", plan.warnings);
    }
}
