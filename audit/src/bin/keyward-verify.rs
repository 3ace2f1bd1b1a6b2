//! `keyward-verify`: the auditor's offline verifier (its commands come with the next change).

fn main() {}
