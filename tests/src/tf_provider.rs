//! Real Terraform with the test provider `kwobjects` (`testprovider/`) installed: a
//! `filesystem_mirror` holding the built `terraform-provider-kwobjects`, a CLI configuration that
//! takes `keyward/kwobjects` from there (and every other provider from its registry, as usual),
//! and a runner for `terraform` commands in a work dir.
//!
//! The mirror uses the *packed* layout — the provider's zip right under its
//! `HOST/NAMESPACE/TYPE/` directory, no version directory:
//! `registry.terraform.io/keyward/kwobjects/terraform-provider-kwobjects_0.1.0_linux_amd64.zip`.
//! `dev_overrides` would need no zip, but it warns on every command and `terraform init` fails
//! with it. The zip is written here (stored, not compressed: Terraform accepts either), with
//! the binary's Unix mode so that Terraform extracts it executable.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::binary;
use crate::broker::Output;

/// The provider's source address, as a configuration's `required_providers` names it.
pub const SOURCE: &str = "keyward/kwobjects";
/// The version the mirror offers.
pub const VERSION: &str = "0.1.0";
/// The binary `cargo build --workspace --bins` builds.
const BINARY: &str = "terraform-provider-kwobjects";
/// How long one `terraform` command may run before the test fails.
const TERRAFORM_DEADLINE: Duration = Duration::from_secs(180);

/// A mirror with the provider installed, and the CLI configuration that uses it.
#[derive(Debug)]
pub struct ProviderMirror {
    cli_config: PathBuf,
}

impl ProviderMirror {
    /// Installs the built provider into `dir/mirror` and writes `dir/terraform.rc`.
    pub fn install(dir: &Path) -> Self {
        let mirror = dir.join("mirror");
        let package = mirror.join("registry.terraform.io").join(SOURCE);
        std::fs::create_dir_all(&package).expect("the mirror's provider directory");
        let executable = std::fs::read(binary(BINARY)).expect("read the provider binary");
        let zip = stored_zip::single_file(BINARY, &executable, 0o755);
        std::fs::write(package.join(format!("{BINARY}_{VERSION}_linux_amd64.zip")), zip).expect("write the zip");

        let cli_config = dir.join("terraform.rc");
        let source = format!("registry.terraform.io/{SOURCE}");
        std::fs::write(
            &cli_config,
            format!(
                "provider_installation {{\n  filesystem_mirror {{\n    path    = \"{}\"\n    include = [\"{source}\"]\n  }}\n  \
                 direct {{\n    exclude = [\"{source}\"]\n  }}\n}}\n",
                mirror.display()
            ),
        )
        .expect("write the CLI configuration");
        ProviderMirror { cli_config }
    }

    /// The CLI configuration file (`TF_CLI_CONFIG_FILE`).
    pub fn cli_config(&self) -> &Path {
        &self.cli_config
    }

    /// The environment a `terraform` command needs to find the provider (and not phone home).
    pub fn envs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TF_CLI_CONFIG_FILE", self.cli_config.display().to_string()),
            ("CHECKPOINT_DISABLE", "1".to_owned()),
            ("TF_IN_AUTOMATION", "1".to_owned()),
        ]
    }

    /// Runs `terraform ARGS` (with `-no-color` added after the subcommand: `apply`, or two
    /// words for `state list` and `workspace new`) in `work` to completion; a command running
    /// past the deadline is killed and fails the test.
    pub async fn terraform(&self, work: &Path, args: &[&str]) -> Output {
        let mut command = tokio::process::Command::new("terraform");
        let words = if matches!(args.first(), Some(&"state" | &"workspace")) { 2 } else { 1 };
        let (subcommand, rest) = args.split_at(words.min(args.len()));
        command
            .args(subcommand)
            .arg("-no-color")
            .args(rest)
            .current_dir(work)
            .envs(self.envs())
            // Nothing from the environment that changes where providers come from or what is logged.
            .env_remove("TF_PLUGIN_CACHE_DIR")
            .env_remove("TF_LOG")
            .env_remove("TF_CLI_ARGS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = command.spawn().expect("run terraform (is it on PATH?)");
        let output = tokio::time::timeout(TERRAFORM_DEADLINE, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("`terraform {}` ran past {TERRAFORM_DEADLINE:?}", args.join(" ")))
            .expect("wait for terraform");
        Output {
            success: output.status.success(),
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// A zip archive of one stored (uncompressed) file, which is all a provider package is.
mod stored_zip {
    /// Local file header, central directory header, end of central directory.
    const LOCAL: u32 = 0x0403_4b50;
    const CENTRAL: u32 = 0x0201_4b50;
    const END: u32 = 0x0605_4b50;
    /// Version 2.0 of the format: what stored files need.
    const VERSION: u16 = 20;
    /// "Made by" Unix (high byte 3), so readers take the mode from the external attributes.
    const MADE_BY_UNIX: u16 = (3 << 8) | VERSION;
    /// 1980-01-01 00:00, the format's epoch (a fixed time keeps the zip reproducible).
    const DOS_TIME: u16 = 0;
    const DOS_DATE: u16 = (1 << 5) | 1;

    /// The archive holding `contents` as `name`, a regular file with permissions `mode`.
    pub(super) fn single_file(name: &str, contents: &[u8], mode: u32) -> Vec<u8> {
        let size = u32::try_from(contents.len()).expect("zip32 holds files under 4 GiB");
        let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(contents);
        let name_len = u16::try_from(name.len()).expect("a short file name");
        // Shared by both headers: version needed, flags, method (stored), time, date, CRC,
        // compressed and uncompressed size, name length, extra length.
        let mut common = Vec::new();
        for half in [VERSION, 0, 0, DOS_TIME, DOS_DATE] {
            common.extend(half.to_le_bytes());
        }
        for word in [crc, size, size] {
            common.extend(word.to_le_bytes());
        }
        common.extend(name_len.to_le_bytes());
        common.extend(0_u16.to_le_bytes());

        let mut zip = Vec::with_capacity(contents.len() + 256);
        zip.extend(LOCAL.to_le_bytes());
        zip.extend(&common);
        zip.extend(name.as_bytes());
        zip.extend(contents);

        let central_offset = u32::try_from(zip.len()).expect("zip32 offsets");
        zip.extend(CENTRAL.to_le_bytes());
        zip.extend(MADE_BY_UNIX.to_le_bytes());
        zip.extend(&common);
        // Comment length, disk number, internal attributes.
        for half in [0_u16, 0, 0] {
            zip.extend(half.to_le_bytes());
        }
        // External attributes: the Unix mode of a regular file in the high half; then the
        // local header's offset.
        zip.extend(((0o100_000 | mode) << 16).to_le_bytes());
        zip.extend(0_u32.to_le_bytes());
        zip.extend(name.as_bytes());
        let central_size = u32::try_from(zip.len()).expect("zip32 offsets") - central_offset;

        zip.extend(END.to_le_bytes());
        // This disk, the central directory's disk, entries on this disk, entries in all.
        for half in [0_u16, 0, 1, 1] {
            zip.extend(half.to_le_bytes());
        }
        zip.extend(central_size.to_le_bytes());
        zip.extend(central_offset.to_le_bytes());
        zip.extend(0_u16.to_le_bytes());
        zip
    }
}
