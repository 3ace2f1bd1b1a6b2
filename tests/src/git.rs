//! Real git repositories for stacks: created with the `git` binary in a temporary directory and
//! served as `file://` URLs, the way a stack names a repository.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A repository with a `main` branch holding a small Terraform configuration.
#[derive(Debug)]
pub struct GitRepo {
    /// Its directory.
    pub dir: PathBuf,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Keyward Tests")
        .env("GIT_AUTHOR_EMAIL", "tests@keyward.invalid")
        .env("GIT_COMMITTER_NAME", "Keyward Tests")
        .env("GIT_COMMITTER_EMAIL", "tests@keyward.invalid")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("run git");
    assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

impl GitRepo {
    /// `git init -b main` in `dir` with one commit of `main.tf`.
    pub fn init(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("repo dir");
        git(dir, &["init", "-q", "-b", "main"]);
        let repo = Self { dir: dir.to_owned() };
        repo.commit("main.tf", "resource \"terraform_data\" \"example\" {\n  input = \"one\"\n}\n");
        repo
    }

    /// Commits `contents` as `file` on the current branch; returns the new commit SHA.
    pub fn commit(&self, file: &str, contents: &str) -> String {
        std::fs::write(self.dir.join(file), contents).expect("write file");
        git(&self.dir, &["add", file]);
        git(&self.dir, &["commit", "-q", "-m", &format!("change {file}")]);
        self.head()
    }

    /// Commits a symlink `file` pointing at `target` (which need not exist).
    pub fn commit_symlink(&self, file: &str, target: &str) -> String {
        std::os::unix::fs::symlink(target, self.dir.join(file)).expect("symlink");
        git(&self.dir, &["add", file]);
        git(&self.dir, &["commit", "-q", "-m", &format!("link {file}")]);
        self.head()
    }

    /// Commits on a new branch `name` (and returns to `main`); returns that commit's SHA.
    pub fn commit_on_branch(&self, name: &str, file: &str, contents: &str) -> String {
        git(&self.dir, &["checkout", "-q", "-b", name]);
        let sha = self.commit(file, contents);
        git(&self.dir, &["checkout", "-q", "main"]);
        sha
    }

    /// Commits on branch `name` (creating it from `main` if need be, and returning to `main`);
    /// returns that commit's SHA.
    pub fn commit_to(&self, name: &str, file: &str, contents: &str) -> String {
        let exists = git(&self.dir, &["branch", "--list", name]);
        git(
            &self.dir,
            &if exists.is_empty() { vec!["checkout", "-q", "-b", name] } else { vec!["checkout", "-q", name] },
        );
        let sha = self.commit(file, contents);
        git(&self.dir, &["checkout", "-q", "main"]);
        sha
    }

    /// Merges branch `name` into `main` with a merge commit, as a pull request's merge button
    /// does; returns the merge commit's SHA.
    pub fn merge(&self, name: &str) -> String {
        git(&self.dir, &["merge", "-q", "--no-ff", "-m", &format!("Merge branch {name}"), name]);
        self.head()
    }

    /// A commit that no branch heads (an older commit of `main`).
    pub fn older_commit(&self) -> String {
        git(&self.dir, &["rev-parse", "HEAD~1"])
    }

    /// The SHA `HEAD` points at.
    pub fn head(&self) -> String {
        git(&self.dir, &["rev-parse", "HEAD"])
    }

    /// `file://…`.
    pub fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }
}
