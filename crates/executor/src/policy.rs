//! The policy: which folders this desktop may read and write, and for each risky class of
//! action whether to allow it, ask the phone first, or deny it.
//!
//! The policy is enforced here, by the executor, for every action whether it came from a direct
//! command or from a model: nothing in a prompt, a file or a web page can widen it. Every path
//! is resolved *before* it is checked (symlinks followed, `..` applied by the filesystem), and
//! the tools are handed the resolved path, so what was checked is what is used.
//!
//! The only IO here is reading the policy file, creating the workspace folder, and the
//! metadata look-ups that path resolution needs.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::action::{Action, ActionClass};
use crate::command::{is_http_url, is_valid_combo};

mod guard;

pub use guard::DEFAULT_PASS_ENV;

/// A commented example policy file, with the defaults that apply when a key is left out.
/// Shown to people who want to write their own; a test checks that it parses.
pub const EXAMPLE: &str = r#"# errand executor policy.
#
# Paths may start with ~ (your home folder). Relative paths are relative to the folder that
# holds this file. Unknown keys are errors, so a typo cannot silently fall back to a default.

# The default folder: relative paths in actions resolve against it, and shell commands run in
# it. It is always readable and writable, and is created if missing.
# Default: the folder "workspace" inside the errand home.
workspace = "~/errand-workspace"

# Extra folders that may be read (listed, read). Default: none.
readable = ["~/Documents"]

# Extra folders that may be written (files created, overwritten, deleted); they may be read too.
# Default: none.
writable = []

# An approval request that nobody answers counts as denied after this many seconds.
approval_timeout_secs = 300

# Environment variables shell commands get besides PATH, HOME, USER, LOGNAME, SHELL, LANG,
# LC_ALL, LC_CTYPE, TERM, TZ and TMPDIR. The model's API key is never passed on. Default: none.
pass_env = []

# Whether /fetch (and the model's fetches) may reach loopback, link-local and private
# addresses (127.0.0.0/8, 10/8, 172.16/12, 192.168/16, 169.254/16, ::1, fc00::/7, fe80::/10).
# Default: false.
allow_private_network = false

# Whatever the folders above say, no tool reads or writes errand's own home (its key, database,
# policy, model and connector configuration) except the workspace folder inside it.

# For each class of risky action: "allow", "ask" (the phone must approve each time) or "deny".
[actions]
shell = "ask"       # run a shell command (a shell can reach anything your account can)
delete = "ask"      # delete a file, or overwrite one that exists
network = "allow"   # fetch a URL (HTTP GET)
screenshot = "ask"  # capture the screen
input = "ask"       # type, press keys, click
"#;

/// The default for `approval_timeout_secs`.
const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(300);

/// What the policy says about a class of action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Go ahead without asking.
    Allow,
    /// Write an approval request and wait for a phone to decide.
    Ask,
    /// Refuse.
    Deny,
}

/// The rule for each [`ActionClass`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Actions {
    shell: Decision,
    delete: Decision,
    network: Decision,
    screenshot: Decision,
    input: Decision,
}

impl Default for Actions {
    /// Everything that changes or reveals the machine asks first. Network is allowed because a
    /// fetch is an HTTP GET whose response only comes back to the task: it changes nothing here
    /// and reveals nothing of this machine beyond what the URL itself carries. Whoever finds
    /// that too wide sets `network = "ask"` or `"deny"` in the policy.
    fn default() -> Self {
        Actions {
            shell: Decision::Ask,
            delete: Decision::Ask,
            network: Decision::Allow,
            screenshot: Decision::Ask,
            input: Decision::Ask,
        }
    }
}

/// The policy file as written. Folder entries keep their position so errors found after
/// parsing (such as `~user`) can still name the line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    workspace: Option<Spanned<String>>,
    #[serde(default)]
    readable: Vec<Spanned<String>>,
    #[serde(default)]
    writable: Vec<Spanned<String>>,
    approval_timeout_secs: Option<Spanned<u64>>,
    #[serde(default)]
    pass_env: Vec<Spanned<String>>,
    #[serde(default)]
    allow_private_network: bool,
    #[serde(default)]
    actions: Actions,
}

/// Why a policy could not be loaded. There is never a fallback: a policy file that cannot be
/// used stops the executor rather than running it under rules nobody wrote.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file exists but could not be read.
    #[error("cannot read policy file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The text is not valid TOML, has an unknown key, or a value that does not fit.
    #[error("{}: {message}", location(file.as_deref(), *line))]
    Invalid {
        /// The file, when the text came from one.
        file: Option<PathBuf>,
        /// The 1-based line of the problem, when known.
        line: Option<usize>,
        message: String,
    },
    /// The workspace folder does not exist and could not be created.
    #[error("cannot create workspace folder {}: {source}", path.display())]
    CreateWorkspace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// "policy file /x/policy.toml, line 3", for [`PolicyError::Invalid`].
fn location(file: Option<&Path>, line: Option<usize>) -> String {
    let mut out = match file {
        Some(file) => format!("policy file {}", file.display()),
        None => "policy".to_owned(),
    };
    if let Some(line) = line {
        out.push_str(&format!(", line {line}"));
    }
    out
}

/// Why an action was refused. The message says what was refused and why, for the task's error
/// and for the model (which may then try something allowed).
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    #[error("{path} is outside the folders this desktop may read")]
    OutsideReadable { path: String },
    #[error("{path} is outside the folders this desktop may write")]
    OutsideWritable { path: String },
    /// `..` after a component that does not exist cannot be resolved by the filesystem, and
    /// resolving it by hand could disagree with what the OS later does.
    #[error("{path}: `..` after a folder that does not exist is not allowed")]
    ParentOfMissing { path: String },
    /// A dangling symlink, a symlink loop, or something else that exists but cannot be
    /// resolved: writing through it could land anywhere.
    #[error("{path} cannot be resolved (a broken symlink or a symlink loop)")]
    Unresolvable { path: String },
    #[error("cannot resolve {path}: {source}")]
    Resolve {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The workspace and the folders named in the policy cannot themselves be written over or
    /// deleted: the policy grants what is inside them.
    #[error("{path} is one of the allowed folders itself and cannot be {verb}")]
    AllowedRoot { path: String, verb: &'static str },
    #[error("{path} resolves to a name that is not valid UTF-8")]
    NotUtf8 { path: String },
    /// errand's own home and configuration are never a tool's, whatever the folders say.
    #[error(
        "{path} belongs to errand itself (its keys, database or configuration): no tool may read or write it"
    )]
    Errand { path: String },
    #[error("{path} starts with ~ but the home folder is unknown (HOME is not set)")]
    NoHome { path: String },
    #[error("only http:// and https:// URLs may be fetched, not {0:?}")]
    NotHttp(String),
    #[error("not a key combination: {0:?}")]
    BadCombo(String),
    /// The policy says deny for this class of action.
    #[error("policy denies {0}")]
    Policy(ActionClass),
    /// A connector call, which only the connectors' rules decide.
    #[error("connector tools are ruled on by connectors.toml, not the policy file")]
    Connector,
}

/// An action that passed the policy check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// The action with every path replaced by its resolved absolute path: hand this one, not
    /// the original, to the tool.
    pub action: Action,
    /// The risky class of the action, if it has one. The policy does not deny it; the runner
    /// asks the phone when [`Policy::decision`] says [`Decision::Ask`].
    pub class: Option<ActionClass>,
    /// What the action does, in words, with resolved paths: the text of an approval request.
    pub description: String,
}

/// The loaded policy. See [`EXAMPLE`] for the file format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    workspace: PathBuf,
    readable: Vec<PathBuf>,
    writable: Vec<PathBuf>,
    approval_timeout: Duration,
    actions: Actions,
    /// The user's home folder, for `~` in action paths; captured once so checks do not depend
    /// on the environment changing under them.
    user_home: Option<PathBuf>,
    allow_private_network: bool,
    guard: guard::Guard,
}

/// The user's home folder from `$HOME`, which is what `~` means to the person writing paths.
fn env_home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
}

/// How an action uses a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    Delete,
}

impl Policy {
    /// The policy when no file exists: the workspace folder `<home>/workspace` only, where
    /// `home` is the errand home (the device's data folder); ask before shell, delete or
    /// overwrite, screenshots and input; allow network (see [`Decision`] defaults).
    pub fn defaults(home: &Path) -> Policy {
        Policy {
            workspace: home.join("workspace"),
            readable: Vec::new(),
            writable: Vec::new(),
            approval_timeout: DEFAULT_APPROVAL_TIMEOUT,
            actions: Actions::default(),
            user_home: env_home(),
            allow_private_network: false,
            guard: guard::Guard::new(home),
        }
    }

    /// Loads the policy file at `path`, or the defaults when there is no such file, and
    /// creates the workspace folder if it is missing. A file that exists but cannot be read or
    /// parsed is an error naming the file (and line), never a fallback.
    pub fn load(path: &Path, home: &Path) -> Result<Policy, PolicyError> {
        let mut policy = match fs::read_to_string(path) {
            Ok(text) => {
                let base_dir = path.parent().unwrap_or(Path::new("."));
                Policy::parse(&text, base_dir, home).map_err(|err| match err {
                    PolicyError::Invalid { line, message, .. } => PolicyError::Invalid {
                        file: Some(path.to_owned()),
                        line,
                        message,
                    },
                    other => other,
                })?
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => Policy::defaults(home),
            Err(source) => {
                return Err(PolicyError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        if !path.starts_with(home) {
            policy.protect(path);
        }
        policy.ensure_workspace()?;
        Ok(policy)
    }

    /// Parses policy text. Relative folder paths are relative to `base_dir`; `~` is the user's
    /// home (`$HOME`); `home` is the errand home, for the default workspace. Does not create
    /// the workspace (see [`Policy::ensure_workspace`]).
    pub fn parse(text: &str, base_dir: &Path, home: &Path) -> Result<Policy, PolicyError> {
        Policy::parse_with_user_home(text, base_dir, home, env_home())
    }

    fn parse_with_user_home(
        text: &str,
        base_dir: &Path,
        home: &Path,
        user_home: Option<PathBuf>,
    ) -> Result<Policy, PolicyError> {
        let invalid = |span: Option<std::ops::Range<usize>>, message: &str| PolicyError::Invalid {
            file: None,
            line: span.map(|span| line_of(text, span.start)),
            // toml messages can span lines; the error is one line.
            message: message.trim().replace('\n', "; "),
        };
        let file: PolicyFile =
            toml::from_str(text).map_err(|err| invalid(err.span(), err.message()))?;

        let folder = |entry: &Spanned<String>| {
            expand_folder(entry.get_ref(), base_dir, user_home.as_deref())
                .map_err(|message| invalid(Some(entry.span()), &message))
        };
        let workspace = match &file.workspace {
            Some(entry) => folder(entry)?,
            None => home.join("workspace"),
        };
        let readable = file.readable.iter().map(folder).collect::<Result<_, _>>()?;
        let writable = file.writable.iter().map(folder).collect::<Result<_, _>>()?;
        let approval_timeout = match &file.approval_timeout_secs {
            Some(secs) if *secs.get_ref() == 0 => {
                return Err(invalid(
                    Some(secs.span()),
                    "approval_timeout_secs must be at least 1",
                ));
            }
            Some(secs) => Duration::from_secs(*secs.get_ref()),
            None => DEFAULT_APPROVAL_TIMEOUT,
        };
        let mut guard = guard::Guard::new(home);
        for var in &file.pass_env {
            let name = var.get_ref();
            if name.is_empty() || name.contains('=') {
                return Err(invalid(
                    Some(var.span()),
                    &format!("pass_env: {name:?} is not an environment variable name"),
                ));
            }
            guard.pass_env.push(name.clone());
        }
        Ok(Policy {
            workspace,
            readable,
            writable,
            approval_timeout,
            actions: file.actions,
            user_home,
            allow_private_network: file.allow_private_network,
            guard,
        })
    }

    /// Creates the workspace folder (and its parents) if it does not exist.
    pub fn ensure_workspace(&self) -> Result<(), PolicyError> {
        fs::create_dir_all(&self.workspace).map_err(|source| PolicyError::CreateWorkspace {
            path: self.workspace.clone(),
            source,
        })
    }

    /// What the policy says about a class of action.
    pub fn decision(&self, class: ActionClass) -> Decision {
        match class {
            ActionClass::Shell => self.actions.shell,
            ActionClass::Delete => self.actions.delete,
            ActionClass::Network => self.actions.network,
            ActionClass::Screenshot => self.actions.screenshot,
            ActionClass::Input => self.actions.input,
        }
    }

    /// The workspace folder, as configured (not resolved): shell commands run here.
    pub fn workspace(&self) -> &Path {
        &self.workspace
    }

    /// The extra readable folders, as configured.
    pub fn readable(&self) -> &[PathBuf] {
        &self.readable
    }

    /// The extra writable folders, as configured.
    pub fn writable(&self) -> &[PathBuf] {
        &self.writable
    }

    /// Adds a file of errand's own kept outside its home (a `--model` or `--policy` file): no
    /// tool may read or write it.
    pub fn protect(&mut self, file: &Path) {
        self.guard.files.push(file.to_path_buf());
    }

    /// Keeps an environment variable (the model's API key) from every child process, whatever
    /// `pass_env` says.
    pub fn withhold_env(&mut self, var: &str) {
        self.guard.withheld_env.push(var.to_owned());
    }

    /// The environment for a shell command: [`DEFAULT_PASS_ENV`] and `pass_env` taken from
    /// this process's environment, less the withheld variables.
    pub fn child_env(&self) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
        self.guard.child_env(std::env::vars_os())
    }

    /// Whether fetches may reach loopback, link-local and private addresses.
    pub fn allows_private_network(&self) -> bool {
        self.allow_private_network
    }

    /// How long an approval request may wait before it counts as denied.
    pub fn approval_timeout(&self) -> Duration {
        self.approval_timeout
    }

    /// Checks an action against the policy: resolves its paths, checks them against the
    /// allowed folders, works out its risk class and refuses it if the policy denies that
    /// class. Ask and allow are left to the caller, through [`Checked::class`].
    ///
    /// The shell class is not confined to folders: a shell can reach anything the account can,
    /// which is why it asks by default. It runs in the workspace.
    pub fn check(&self, action: &Action) -> Result<Checked, Denied> {
        let (action, class, description) = match action {
            Action::Sh { .. } => (action.clone(), Some(ActionClass::Shell), None),
            Action::Ls { path } => {
                let path = self.resolve_for(path, Access::Read)?;
                (Action::Ls { path }, None, None)
            }
            Action::Read { path } => {
                let path = self.resolve_for(path, Access::Read)?;
                (Action::Read { path }, None, None)
            }
            Action::Write { path, text } => {
                let path = self.resolve_for(path, Access::Write)?;
                // The resolved path has its symlinks followed, so this sees the real target.
                if fs::symlink_metadata(&path).is_ok() {
                    let description = format!("overwrite {path} with {} bytes", text.len());
                    let action = Action::Write {
                        path,
                        text: text.clone(),
                    };
                    (action, Some(ActionClass::Delete), Some(description))
                } else {
                    let action = Action::Write {
                        path,
                        text: text.clone(),
                    };
                    (action, None, None)
                }
            }
            Action::Rm { path } => {
                let path = self.resolve_for(path, Access::Delete)?;
                (Action::Rm { path }, Some(ActionClass::Delete), None)
            }
            Action::Fetch { url } => {
                if !is_http_url(url) {
                    return Err(Denied::NotHttp(url.clone()));
                }
                (action.clone(), Some(ActionClass::Network), None)
            }
            Action::Screenshot => (action.clone(), Some(ActionClass::Screenshot), None),
            Action::Key { combo } if !is_valid_combo(combo) => {
                return Err(Denied::BadCombo(combo.clone()));
            }
            Action::Type { .. } | Action::Key { .. } | Action::Click { .. } => {
                (action.clone(), Some(ActionClass::Input), None)
            }
            // Connector tools are ruled on per tool by connectors.toml, in
            // `crate::connectors`, which the runner asks instead; refusing here keeps a caller
            // that asks the wrong module from running one unchecked.
            Action::Mcp { .. } => return Err(Denied::Connector),
        };
        if let Some(class) = class
            && self.decision(class) == Decision::Deny
        {
            return Err(Denied::Policy(class));
        }
        let description = description.unwrap_or_else(|| action.to_string());
        Ok(Checked {
            action,
            class,
            description,
        })
    }

    /// Resolves a path from an action and checks it is inside a folder that allows `access`.
    fn resolve_for(&self, requested: &str, access: Access) -> Result<String, Denied> {
        let absolute = self.absolute_request(requested)?;
        let resolved = if access == Access::Delete && is_symlink(&absolute) {
            // Deleting a symlink deletes the link, not its target: resolve the folder that
            // holds it and keep the link's own name. The link must then be inside a writable
            // folder; where it points does not matter.
            match (absolute.parent(), absolute.file_name()) {
                (Some(parent), Some(name)) => resolve(parent)?.join(name),
                _ => resolve(&absolute)?,
            }
        } else {
            resolve(&absolute)?
        };
        let shown = || show(requested, &resolved);

        let workspace = resolve(&self.workspace).ok();
        if self.guard.owns(&resolved, workspace.as_deref()) {
            return Err(Denied::Errand { path: shown() });
        }
        let writable: Vec<PathBuf> = workspace
            .iter()
            .cloned()
            .chain(self.writable.iter().filter_map(|root| resolve(root).ok()))
            .collect();
        let readable: Vec<PathBuf> = self
            .readable
            .iter()
            .filter_map(|root| resolve(root).ok())
            .collect();

        let inside = |roots: &[PathBuf]| roots.iter().any(|root| resolved.starts_with(root));
        match access {
            Access::Read => {
                if !inside(&writable) && !inside(&readable) {
                    return Err(Denied::OutsideReadable { path: shown() });
                }
            }
            Access::Write | Access::Delete => {
                if !inside(&writable) {
                    return Err(Denied::OutsideWritable { path: shown() });
                }
                if writable
                    .iter()
                    .chain(&readable)
                    .any(|root| *root == resolved)
                {
                    let verb = match access {
                        Access::Delete => "deleted",
                        _ => "written over",
                    };
                    return Err(Denied::AllowedRoot {
                        path: shown(),
                        verb,
                    });
                }
            }
        }
        resolved
            .into_os_string()
            .into_string()
            .map_err(|_| Denied::NotUtf8 {
                path: requested.to_owned(),
            })
    }

    /// An action's path made absolute: `~` and `~/...` are the user's home, other relative
    /// paths are relative to the workspace.
    fn absolute_request(&self, requested: &str) -> Result<PathBuf, Denied> {
        let tilde_rest = if requested == "~" {
            Some("")
        } else {
            requested.strip_prefix("~/")
        };
        match tilde_rest {
            Some(rest) => match &self.user_home {
                Some(home) => Ok(home.join(rest)),
                None => Err(Denied::NoHome {
                    path: requested.to_owned(),
                }),
            },
            None => Ok(self.workspace.join(requested)),
        }
    }
}

/// Whether `path` itself (not what it points to) is a symlink.
fn is_symlink(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_symlink())
}

/// How a path appears in a denial: the resolved path, and the requested one when they differ,
/// so a person sees both what was asked and where it really led.
fn show(requested: &str, resolved: &Path) -> String {
    if Path::new(requested) == resolved {
        resolved.display().to_string()
    } else {
        format!("{requested} ({})", resolved.display())
    }
}

/// Resolves a path the way the OS will when it is used, so the check and the use agree.
///
/// The longest prefix that exists is canonicalized (which follows every symlink and applies
/// every `..` in it); the components that do not exist yet are appended. Among those, `..` is
/// refused (it cannot be resolved without guessing), and the first one must not exist in any
/// form: if it does, it is a broken symlink or a loop, and a write through it would create its
/// target wherever that is.
fn resolve(path: &Path) -> Result<PathBuf, Denied> {
    let shown = || path.display().to_string();
    let absolute = std::path::absolute(path).map_err(|source| Denied::Resolve {
        path: shown(),
        source,
    })?;
    let components: Vec<Component<'_>> = absolute.components().collect();
    for existing in (1..=components.len()).rev() {
        let prefix: PathBuf = components[..existing].iter().collect();
        let Ok(mut resolved) = fs::canonicalize(&prefix) else {
            continue;
        };
        for (index, component) in components[existing..].iter().enumerate() {
            match component {
                Component::Normal(name) => {
                    resolved.push(name);
                    if index == 0 && fs::symlink_metadata(&resolved).is_ok() {
                        return Err(Denied::Unresolvable { path: shown() });
                    }
                }
                Component::CurDir => {}
                Component::ParentDir => return Err(Denied::ParentOfMissing { path: shown() }),
                // Only the first component of an absolute path is a root or prefix, and the
                // root always canonicalizes.
                Component::RootDir | Component::Prefix(_) => {
                    return Err(Denied::Unresolvable { path: shown() });
                }
            }
        }
        return Ok(resolved);
    }
    Err(Denied::Resolve {
        path: shown(),
        source: io::Error::new(io::ErrorKind::NotFound, "no part of the path exists"),
    })
}

/// A folder entry of the policy file made absolute. The error is the message for the line.
fn expand_folder(
    entry: &str,
    base_dir: &Path,
    user_home: Option<&Path>,
) -> Result<PathBuf, String> {
    if entry.is_empty() {
        return Err("a folder path must not be empty".to_owned());
    }
    let path = if entry == "~" || entry.starts_with("~/") {
        let home = user_home.ok_or_else(|| format!("{entry}: HOME is not set, so ~ is unknown"))?;
        home.join(entry.trim_start_matches('~').trim_start_matches('/'))
    } else if entry.starts_with('~') {
        return Err(format!(
            "{entry}: only ~ and ~/... are supported, not ~user"
        ));
    } else {
        base_dir.join(entry)
    };
    std::path::absolute(&path).map_err(|err| format!("{entry}: {err}"))
}

/// The 1-based line of a byte offset in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests;
