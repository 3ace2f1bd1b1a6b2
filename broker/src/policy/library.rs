//! The shipped policy library (`policies/` in the source tree), embedded so `keyward dev` works
//! from any directory: it seeds `<data dir>/policies` with these files the first time.

/// `(relative path, contents)` of every file in the library.
pub const LIBRARY: &[(&str, &str)] = &[
    ("README.md", include_str!("../../../policies/README.md")),
    ("data.json", include_str!("../../../policies/data.json")),
    ("credentials.rego", include_str!("../../../policies/credentials.rego")),
    ("run.rego", include_str!("../../../policies/run.rego")),
    ("plan.rego", include_str!("../../../policies/plan.rego")),
    ("scan.rego", include_str!("../../../policies/scan.rego")),
    ("approval.rego", include_str!("../../../policies/approval.rego")),
    ("push.rego", include_str!("../../../policies/push.rego")),
    ("cases/credentials.cases.json", include_str!("../../../policies/cases/credentials.cases.json")),
    ("cases/run.cases.json", include_str!("../../../policies/cases/run.cases.json")),
    ("cases/plan.cases.json", include_str!("../../../policies/cases/plan.cases.json")),
    ("cases/scan.cases.json", include_str!("../../../policies/cases/scan.cases.json")),
    ("cases/approval.cases.json", include_str!("../../../policies/cases/approval.cases.json")),
    ("cases/push.cases.json", include_str!("../../../policies/cases/push.cases.json")),
];

/// Writes the library into `dir` (which must not exist yet or be empty).
pub fn write_to(dir: &std::path::Path) -> std::io::Result<()> {
    for (path, contents) in LIBRARY {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(target, contents)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Every file of the source tree's library is embedded, so `keyward dev` ships all of it.
    #[test]
    fn the_embedded_library_is_complete() -> std::io::Result<()> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let mut on_disk = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                for inner in std::fs::read_dir(entry.path())? {
                    on_disk.push(format!(
                        "{}/{}",
                        entry.file_name().to_string_lossy(),
                        inner?.file_name().to_string_lossy()
                    ));
                }
            } else {
                on_disk.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        on_disk.sort();
        let mut embedded: Vec<String> = super::LIBRARY.iter().map(|(p, _)| (*p).to_owned()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded, "add new policy files to policy/library.rs");
        Ok(())
    }
}
