use std::os::unix::fs::symlink;

use super::*;

/// A policy over a temp dir: `<tmp>/ws` is the workspace, `<tmp>/docs` readable,
/// `<tmp>/out` writable, `<tmp>/user` the user's home.
struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    policy: Policy,
}

fn setup(actions: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    for dir in ["ws", "docs", "out", "user", "outside"] {
        fs::create_dir(root.join(dir)).unwrap();
    }
    let text = format!(
        "workspace = \"ws\"\nreadable = [\"docs\"]\nwritable = [\"out\"]\n[actions]\n{actions}\n"
    );
    let policy =
        Policy::parse_with_user_home(&text, &root, &root.join("errand"), Some(root.join("user")))
            .unwrap();
    Setup {
        _tmp: tmp,
        root,
        policy,
    }
}

fn path_of(checked: &Checked) -> PathBuf {
    match &checked.action {
        Action::Ls { path }
        | Action::Read { path }
        | Action::Rm { path }
        | Action::Write { path, .. } => PathBuf::from(path),
        other => panic!("no path in {other:?}"),
    }
}

fn read(path: &str) -> Action {
    Action::Read { path: path.into() }
}

fn write(path: &str) -> Action {
    Action::Write {
        path: path.into(),
        text: "x".into(),
    }
}

#[test]
fn example_parses() {
    let home = Path::new("/errand-home");
    let policy = Policy::parse_with_user_home(
        EXAMPLE,
        Path::new("/etc/errand"),
        home,
        Some(PathBuf::from("/home/a")),
    )
    .unwrap();
    assert_eq!(policy.workspace(), Path::new("/home/a/errand-workspace"));
    assert_eq!(policy.readable(), [PathBuf::from("/home/a/Documents")]);
    assert!(policy.writable().is_empty());
    assert_eq!(policy.approval_timeout(), Duration::from_secs(300));
    // The example spells out the defaults.
    let defaults = Policy::defaults(home);
    for class in [
        ActionClass::Shell,
        ActionClass::Delete,
        ActionClass::Network,
        ActionClass::Screenshot,
        ActionClass::Input,
    ] {
        assert_eq!(policy.decision(class), defaults.decision(class), "{class}");
    }
}

#[test]
fn defaults_are_safe() {
    let policy = Policy::defaults(Path::new("/h"));
    assert_eq!(policy.workspace(), Path::new("/h/workspace"));
    assert!(policy.readable().is_empty() && policy.writable().is_empty());
    assert_eq!(policy.decision(ActionClass::Shell), Decision::Ask);
    assert_eq!(policy.decision(ActionClass::Delete), Decision::Ask);
    assert_eq!(policy.decision(ActionClass::Screenshot), Decision::Ask);
    assert_eq!(policy.decision(ActionClass::Input), Decision::Ask);
    assert_eq!(policy.decision(ActionClass::Network), Decision::Allow);
    assert_eq!(policy.approval_timeout(), Duration::from_secs(300));
}

/// errand's home (key, database, policy, model configuration) stays out of every tool's
/// reach even when a policy folder covers it; the workspace inside it is the tools'.
#[test]
fn the_errand_home_is_never_readable_or_writable() {
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    let home = root.join("errand");
    fs::create_dir_all(home.join("workspace")).unwrap();
    fs::write(home.join("policy.toml"), "").unwrap();
    fs::write(home.join("key"), "secret").unwrap();
    let model = root.join("model.toml");
    fs::write(&model, "").unwrap();
    // A policy that allows writing the folder that holds the home, and the home itself.
    let text = format!(
        "writable = [\"{}\", \"{}\"]\n",
        root.display(),
        home.display()
    );
    let mut policy = Policy::parse_with_user_home(&text, &root, &home, None).unwrap();
    policy.protect(&model);
    for action in [
        read(&format!("{}/key", home.display())),
        write(&format!("{}/policy.toml", home.display())),
        write(&format!("{}/new-file", home.display())),
        Action::Ls {
            path: home.display().to_string(),
        },
        Action::Rm {
            path: format!("{}/key", home.display()),
        },
        write(&model.display().to_string()),
        read("../key"),
    ] {
        let err = policy.check(&action).unwrap_err();
        assert!(matches!(err, Denied::Errand { .. }), "{action}: {err}");
    }
    // Through a symlink in the workspace, too.
    symlink(home.join("key"), home.join("workspace/link")).unwrap();
    assert!(matches!(
        policy.check(&read("link")).unwrap_err(),
        Denied::Errand { .. }
    ));
    // The workspace inside the home, and the rest of the writable folder, stay usable.
    policy.check(&write("notes.txt")).unwrap();
    policy
        .check(&write(&format!("{}/elsewhere.txt", root.display())))
        .unwrap();
}

#[test]
fn pass_env_and_allow_private_network_parse() {
    let home = Path::new("/h");
    let policy = Policy::parse(
        "pass_env = [\"GOPATH\"]\nallow_private_network = true\n",
        home,
        home,
    )
    .unwrap();
    assert!(policy.allows_private_network());
    assert!(!Policy::defaults(home).allows_private_network());
    let err = Policy::parse("pass_env = [\"A=B\"]\n", home, home).unwrap_err();
    assert!(err.to_string().contains("line 1"), "{err}");
}

#[test]
fn missing_file_gives_defaults_and_creates_the_workspace() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = Policy::load(&tmp.path().join("policy.toml"), tmp.path()).unwrap();
    assert_eq!(policy, Policy::defaults(tmp.path()));
    assert!(tmp.path().join("workspace").is_dir());
}

#[test]
fn load_resolves_relative_folders_against_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("conf");
    fs::create_dir(&conf).unwrap();
    let file = conf.join("policy.toml");
    fs::write(&file, "workspace = \"../ws\"\napproval_timeout_secs = 7\n").unwrap();
    let policy = Policy::load(&file, tmp.path()).unwrap();
    assert_eq!(policy.workspace(), conf.join("../ws"));
    assert!(tmp.path().join("ws").is_dir());
    assert_eq!(policy.approval_timeout(), Duration::from_secs(7));
}

#[test]
fn malformed_toml_names_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("policy.toml");
    fs::write(
        &file,
        "workspace = \"ws\"\n\nreadable = [\"a\",\n[actions\n",
    )
    .unwrap();
    let err = Policy::load(&file, tmp.path()).unwrap_err();
    let PolicyError::Invalid {
        file: Some(f),
        line: Some(line),
        ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(f, &file);
    assert!((3..=4).contains(line), "{err}");
    let message = err.to_string();
    assert!(message.starts_with(&format!("policy file {}, line ", file.display())));
    assert!(!message.contains('\n'), "{message}");
    // Nothing was created on the way to the error.
    assert!(!tmp.path().join("ws").exists());
}

#[test]
fn unknown_keys_are_errors() {
    let home = Path::new("/h");
    let err = Policy::parse("workspace = \"/w\"\nreadble = []\n", home, home).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("policy, line 2: unknown field `readble`"),
        "{err}"
    );
    let err =
        Policy::parse("[actions]\nshell = \"ask\"\nshel = \"allow\"\n", home, home).unwrap_err();
    assert!(err.to_string().contains("line 3"), "{err}");
    let err = Policy::parse("[actions]\nshell = \"maybe\"\n", home, home).unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");
    assert!(err.to_string().contains("maybe"), "{err}");
}

#[test]
fn bad_values_are_errors_with_lines() {
    let home = Path::new("/h");
    let err = Policy::parse("\napproval_timeout_secs = 0\n", home, home).unwrap_err();
    assert_eq!(
        err.to_string(),
        "policy, line 2: approval_timeout_secs must be at least 1"
    );
    let err = Policy::parse("readable = [\n  \"~bob/x\",\n]\n", home, home).unwrap_err();
    assert!(
        err.to_string().starts_with("policy, line 2: ~bob/x"),
        "{err}"
    );
    let err = Policy::parse("workspace = \"\"\n", home, home).unwrap_err();
    assert!(err.to_string().contains("must not be empty"), "{err}");
    let err = Policy::parse_with_user_home("workspace = \"~/w\"\n", home, home, None).unwrap_err();
    assert!(err.to_string().contains("HOME is not set"), "{err}");
}

#[test]
fn unreadable_file_is_an_error_not_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    // A directory where the file should be cannot be read as text.
    let file = tmp.path().join("policy.toml");
    fs::create_dir(&file).unwrap();
    let err = Policy::load(&file, tmp.path()).unwrap_err();
    assert!(matches!(err, PolicyError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("policy.toml"), "{err}");
}

#[test]
fn relative_paths_resolve_in_the_workspace() {
    let s = setup("");
    fs::write(s.root.join("ws/a.txt"), "a").unwrap();
    let checked = s.policy.check(&read("a.txt")).unwrap();
    assert_eq!(path_of(&checked), s.root.join("ws/a.txt"));
    assert_eq!(checked.class, None);
    assert_eq!(
        checked.description,
        format!("read {}", s.root.join("ws/a.txt").display())
    );
    let checked = s.policy.check(&Action::Ls { path: ".".into() }).unwrap();
    assert_eq!(path_of(&checked), s.root.join("ws"));
    // Inside the workspace, `..` that stays inside is fine.
    fs::create_dir(s.root.join("ws/sub")).unwrap();
    let checked = s.policy.check(&read("sub/../a.txt")).unwrap();
    assert_eq!(path_of(&checked), s.root.join("ws/a.txt"));
}

#[test]
fn dotdot_cannot_escape() {
    let s = setup("");
    fs::write(s.root.join("outside/secret"), "s").unwrap();
    let err = s.policy.check(&read("../outside/secret")).unwrap_err();
    assert!(matches!(err, Denied::OutsideReadable { .. }), "{err:?}");
    assert!(
        err.to_string().ends_with(&format!(
            "({}) is outside the folders this desktop may read",
            s.root.join("outside/secret").display()
        )),
        "{err}"
    );
    // Through a folder that does not exist, `..` is refused outright.
    let err = s.policy.check(&write("new/../../outside/x")).unwrap_err();
    assert!(matches!(err, Denied::ParentOfMissing { .. }), "{err:?}");
    let err = s.policy.check(&write("new/..")).unwrap_err();
    assert!(matches!(err, Denied::ParentOfMissing { .. }), "{err:?}");
}

#[test]
fn absolute_paths_need_an_allowed_folder() {
    let s = setup("");
    let err = s.policy.check(&read("/etc/passwd")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/passwd is outside the folders this desktop may read"
    );
    fs::write(s.root.join("docs/d.txt"), "d").unwrap();
    let docs = s.root.join("docs/d.txt");
    let checked = s.policy.check(&read(docs.to_str().unwrap())).unwrap();
    assert_eq!(path_of(&checked), docs);
    // Readable is not writable.
    let err = s.policy.check(&write(docs.to_str().unwrap())).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} is outside the folders this desktop may write",
            docs.display()
        )
    );
    // Writable is readable too, and writable.
    let out = s.root.join("out/o.txt");
    s.policy.check(&read(out.to_str().unwrap())).unwrap();
    let checked = s.policy.check(&write(out.to_str().unwrap())).unwrap();
    assert_eq!(path_of(&checked), out);
}

#[test]
fn tilde_is_the_user_home() {
    let s = setup("");
    let err = s.policy.check(&read("~/x")).unwrap_err();
    assert!(
        err.to_string()
            .contains(&s.root.join("user/x").display().to_string()),
        "{err}"
    );
    let err = s.policy.check(&read("~")).unwrap_err();
    assert!(matches!(err, Denied::OutsideReadable { .. }), "{err:?}");
}

#[test]
fn sibling_with_common_prefix_is_outside() {
    let s = setup("");
    fs::create_dir(s.root.join("ws2")).unwrap();
    fs::write(s.root.join("ws2/f"), "f").unwrap();
    let sibling = s.root.join("ws2/f");
    let err = s
        .policy
        .check(&read(sibling.to_str().unwrap()))
        .unwrap_err();
    assert!(matches!(err, Denied::OutsideReadable { .. }), "{err:?}");
    let err = s.policy.check(&write("../ws2/g")).unwrap_err();
    assert!(matches!(err, Denied::OutsideWritable { .. }), "{err:?}");
}

#[test]
fn symlink_pointing_outside_is_outside() {
    let s = setup("");
    fs::write(s.root.join("outside/secret"), "s").unwrap();
    symlink(s.root.join("outside/secret"), s.root.join("ws/link")).unwrap();
    symlink(s.root.join("outside"), s.root.join("ws/dirlink")).unwrap();
    let err = s.policy.check(&read("link")).unwrap_err();
    assert!(matches!(err, Denied::OutsideReadable { .. }), "{err:?}");
    let err = s.policy.check(&write("link")).unwrap_err();
    assert!(matches!(err, Denied::OutsideWritable { .. }), "{err:?}");
    let err = s.policy.check(&write("dirlink/new.txt")).unwrap_err();
    assert!(matches!(err, Denied::OutsideWritable { .. }), "{err:?}");
    let err = s
        .policy
        .check(&Action::Ls {
            path: "dirlink".into(),
        })
        .unwrap_err();
    assert!(matches!(err, Denied::OutsideReadable { .. }), "{err:?}");

    // A link inside pointing inside is fine, and resolves to its target.
    fs::write(s.root.join("ws/real"), "r").unwrap();
    symlink(s.root.join("ws/real"), s.root.join("ws/inlink")).unwrap();
    let checked = s.policy.check(&read("inlink")).unwrap();
    assert_eq!(path_of(&checked), s.root.join("ws/real"));

    // Deleting a link deletes the link itself, wherever it points.
    let checked = s
        .policy
        .check(&Action::Rm {
            path: "link".into(),
        })
        .unwrap();
    assert_eq!(path_of(&checked), s.root.join("ws/link"));

    // A symlink in an allowed folder that leads into the workspace is fine to read.
    symlink(s.root.join("ws"), s.root.join("docs/to_ws")).unwrap();
    let via = s.root.join("docs/to_ws/real");
    let checked = s.policy.check(&read(via.to_str().unwrap())).unwrap();
    assert_eq!(path_of(&checked), s.root.join("ws/real"));
}

#[test]
fn dangling_symlink_cannot_be_written_through() {
    let s = setup("");
    symlink(s.root.join("outside/new"), s.root.join("ws/dangling")).unwrap();
    let err = s.policy.check(&write("dangling")).unwrap_err();
    assert!(matches!(err, Denied::Unresolvable { .. }), "{err:?}");
    let err = s.policy.check(&write("dangling/x")).unwrap_err();
    assert!(matches!(err, Denied::Unresolvable { .. }), "{err:?}");
    // A loop is refused too.
    symlink(s.root.join("ws/loop"), s.root.join("ws/loop")).unwrap();
    let err = s.policy.check(&read("loop")).unwrap_err();
    assert!(matches!(err, Denied::Unresolvable { .. }), "{err:?}");
}

#[test]
fn new_nested_file_inside_is_allowed() {
    let s = setup("");
    let checked = s.policy.check(&write("a/b/c.txt")).unwrap();
    assert_eq!(path_of(&checked), s.root.join("ws/a/b/c.txt"));
    assert_eq!(checked.class, None);
    assert_eq!(
        checked.description,
        format!("write 1 bytes to {}", s.root.join("ws/a/b/c.txt").display())
    );
}

#[test]
fn overwrite_and_delete_are_delete_class() {
    let s = setup("");
    fs::write(s.root.join("ws/old.txt"), "old").unwrap();
    let checked = s.policy.check(&write("old.txt")).unwrap();
    assert_eq!(checked.class, Some(ActionClass::Delete));
    assert_eq!(
        checked.description,
        format!(
            "overwrite {} with 1 bytes",
            s.root.join("ws/old.txt").display()
        )
    );
    let checked = s
        .policy
        .check(&Action::Rm {
            path: "old.txt".into(),
        })
        .unwrap();
    assert_eq!(checked.class, Some(ActionClass::Delete));
    assert_eq!(path_of(&checked), s.root.join("ws/old.txt"));
}

#[test]
fn allowed_roots_cannot_be_written_or_deleted() {
    let s = setup("");
    for action in [
        write("."),
        write(""),
        Action::Rm { path: ".".into() },
        Action::Rm {
            path: s.root.join("out").to_str().unwrap().into(),
        },
    ] {
        let err = s.policy.check(&action).unwrap_err();
        assert!(
            matches!(err, Denied::AllowedRoot { .. }),
            "{action:?}: {err:?}"
        );
    }
    let err = s
        .policy
        .check(&Action::Rm { path: ".".into() })
        .unwrap_err();
    assert!(err.to_string().ends_with("cannot be deleted"), "{err}");
    // Listing the workspace itself is fine.
    s.policy.check(&Action::Ls { path: "".into() }).unwrap();
}

#[test]
fn classes_follow_the_policy() {
    let s = setup("shell = \"deny\"\nnetwork = \"ask\"\ninput = \"allow\"\n");
    let err = s
        .policy
        .check(&Action::Sh {
            command: "ls".into(),
        })
        .unwrap_err();
    assert_eq!(err.to_string(), "policy denies shell");
    let checked = s
        .policy
        .check(&Action::Fetch {
            url: "https://example.com".into(),
        })
        .unwrap();
    assert_eq!(checked.class, Some(ActionClass::Network));
    assert_eq!(s.policy.decision(ActionClass::Network), Decision::Ask);
    let checked = s.policy.check(&Action::Click { x: 1, y: 2 }).unwrap();
    assert_eq!(checked.class, Some(ActionClass::Input));
    assert_eq!(checked.description, "click at 1,2");
    let checked = s.policy.check(&Action::Screenshot).unwrap();
    assert_eq!(checked.class, Some(ActionClass::Screenshot));
    // Unset classes keep their defaults.
    assert_eq!(s.policy.decision(ActionClass::Delete), Decision::Ask);

    let s = setup("delete = \"deny\"\n");
    fs::write(s.root.join("ws/old.txt"), "old").unwrap();
    let err = s.policy.check(&write("old.txt")).unwrap_err();
    assert_eq!(err.to_string(), "policy denies delete");
    // A new file is not a delete.
    s.policy.check(&write("new.txt")).unwrap();
}

#[test]
fn model_actions_are_validated_too() {
    let s = setup("");
    let err = s
        .policy
        .check(&Action::Fetch {
            url: "file:///etc/passwd".into(),
        })
        .unwrap_err();
    assert!(matches!(err, Denied::NotHttp(_)), "{err:?}");
    let err = s
        .policy
        .check(&Action::Key {
            combo: "ctrl+".into(),
        })
        .unwrap_err();
    assert!(matches!(err, Denied::BadCombo(_)), "{err:?}");
}

#[test]
fn resolve_handles_trailing_missing_components() {
    let tmp = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(tmp.path()).unwrap();
    assert_eq!(resolve(&root.join("a/./b")).unwrap(), root.join("a/b"));
    assert_eq!(resolve(&root).unwrap(), root);
    assert_eq!(line_of("a\nb\nc", 4), 3);
    assert_eq!(line_of("a", 100), 1);
}
