//! What the policy's folders and actions can never reach: errand's own home and configuration,
//! and the environment of the process that runs the executor.
//!
//! Why: a task comes from a document any member can write, and from web pages a model reads.
//! If a tool could write the policy file, one task could widen the policy for the next start;
//! if it could read the key or the database, it could impersonate this desktop. And a shell
//! command that inherited the daemon's environment would hand out the model's API key and the
//! user's agent sockets (`SSH_AUTH_SOCK`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Environment variables a shell command gets when the policy names no others: enough for
/// ordinary programs to find themselves, their locale and a temporary folder.
pub const DEFAULT_PASS_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "LC_CTYPE", "TERM", "TZ",
    "TMPDIR",
];

/// The paths no tool may read or write, and the variables no child process may see.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub(super) struct Guard {
    /// errand's home (key, database, policy, model and connector configuration).
    pub(super) home: PathBuf,
    /// Configuration files kept elsewhere (`--policy`, `--model`).
    pub(super) files: Vec<PathBuf>,
    /// Variables the policy passes on beyond [`DEFAULT_PASS_ENV`].
    pub(super) pass_env: Vec<String>,
    /// Variables never passed on whatever the policy says (the model's API key).
    pub(super) withheld_env: Vec<String>,
}

impl Guard {
    pub(super) fn new(home: &Path) -> Guard {
        Guard {
            home: home.to_path_buf(),
            ..Guard::default()
        }
    }

    /// Whether `resolved` (a path with its symlinks followed) is errand's own. The workspace
    /// may live inside the home (the default, `HOME/workspace`): that folder is the tools',
    /// everything else in the home is not.
    pub(super) fn owns(&self, resolved: &Path, workspace: Option<&Path>) -> bool {
        let resolve = |p: &Path| super::resolve(p).unwrap_or_else(|_| p.to_path_buf());
        if self.files.iter().any(|file| resolved == resolve(file)) {
            return true;
        }
        let home = resolve(&self.home);
        if !resolved.starts_with(&home) {
            return false;
        }
        match workspace {
            Some(ws) if ws != home && ws.starts_with(&home) => !resolved.starts_with(ws),
            _ => true,
        }
    }

    /// The environment a child process gets: the allowed variables of `vars` (the daemon's
    /// own environment), without the withheld ones.
    pub(super) fn child_env(
        &self,
        vars: impl Iterator<Item = (OsString, OsString)>,
    ) -> Vec<(OsString, OsString)> {
        vars.filter(|(name, _)| {
            let Some(name) = name.to_str() else {
                return false;
            };
            let passed =
                DEFAULT_PASS_ENV.contains(&name) || self.pass_env.iter().any(|p| p == name);
            passed && !self.withheld_env.iter().any(|w| w == name)
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Iterator<Item = (OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn children_get_the_default_variables_and_what_the_policy_passes_never_the_key() {
        let mut guard = Guard::new(Path::new("/h"));
        guard.pass_env = vec!["GOPATH".into(), "ANTHROPIC_API_KEY".into()];
        guard.withheld_env = vec!["ANTHROPIC_API_KEY".into()];
        let env = guard.child_env(vars(&[
            ("PATH", "/bin"),
            ("HOME", "/home/a"),
            ("SSH_AUTH_SOCK", "/tmp/agent"),
            ("ANTHROPIC_API_KEY", "sk-secret"),
            ("GOPATH", "/go"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
        ]));
        let names: Vec<_> = env.iter().map(|(k, _)| k.to_str().unwrap()).collect();
        assert_eq!(names, ["PATH", "HOME", "GOPATH"]);
    }
}
