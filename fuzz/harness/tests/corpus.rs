//! Replays every checked-in seed (`fuzz/corpus/<target>/`) through its target's check, on stable
//! Rust and without libFuzzer: the checks still build against the broker, no seed crashes, and
//! each seed named `accept-…` or `refuse-…` still ends that way, so the seeds keep reaching past
//! the parsers as the formats change. Inputs the fuzzer found and someone checked in (named by
//! their hash) only have to run.

use std::path::Path;

use keyward_fuzz_harness::{Outcome, TARGETS, check};

#[test]
fn every_seed_lands_where_its_name_says() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    let mut wrong = Vec::new();
    for target in TARGETS {
        let mut named = (0, 0);
        for entry in std::fs::read_dir(corpus.join(target))? {
            let path = entry?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let data = std::fs::read(&path)?;
            let outcome = check(target, &data);
            let expected = if name.starts_with("accept-") {
                named.0 += 1;
                Some(Outcome::Accepted)
            } else if name.starts_with("refuse-") {
                named.1 += 1;
                Some(Outcome::Refused)
            } else {
                None
            };
            if expected.is_some() && outcome != expected {
                wrong.push(format!("{target}/{name}: {outcome:?}, expected {expected:?}"));
            }
        }
        assert!(named.0 > 0 && named.1 > 0, "{target} needs accept- and refuse- seeds, has {named:?}");
    }
    assert!(wrong.is_empty(), "seeds that no longer land where their names say:\n{}", wrong.join("\n"));
    Ok(())
}
