//! The Keyward worker agent.
//!
//! The agent runs inside a customer's network, dials out to the broker (nothing dials in), enrolls
//! with a one-time join token, pulls jobs over mTLS and runs Terraform in a sandbox. It shares only
//! `keyward-proto` with the broker. This crate currently carries the binary's identity; enrollment,
//! the work stream, the runner and the sandbox land in their own modules
//! (`client`, `runner`, `sandbox`, `logstream`) as the agent issue is built.

#![forbid(unsafe_code)]

/// The agent protocol version this build speaks.
pub const PROTOCOL_PACKAGE: &str = "keyward.agent.v1";

/// The agent's version string, as sent in `Hello`.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[cfg(test)]
mod tests {
    use keyward_proto::agent_v1::Hello;

    #[test]
    fn hello_carries_the_build_version() {
        let hello = Hello { agent_version: super::version().to_owned(), capacity: 1 };
        assert_eq!(hello.agent_version, env!("CARGO_PKG_VERSION"));
    }
}
