//! Adversarial property tests of the message parser and the path validator.
//!
//! Anyone who can publish to the broker chooses `file_name`, `cloud_path`,
//! `disk_path` and `config_path`. These properties feed random and hostile
//! payloads and paths (traversal, unicode look-alikes, NUL, percent and
//! backslash tricks, huge fields, links planted inside the root) to the
//! public API and check that:
//!
//! - nothing panics;
//! - an accepted `disk_path` or `config_path` lies lexically inside a
//!   canonical root, and once `prepare_parent` succeeded on a real folder
//!   its parent resolves, links and all, inside that root;
//! - nothing outside the roots is ever created or changed;
//! - an accepted `file_name` is a plain name and an accepted `cloud_path` a
//!   clean key under the prefix.
//!
//! Each property runs `GATOR_OTA_FUZZ_CASES` cases (default
//! [`DEFAULT_CASES`]); a longer run:
//!
//! ```sh
//! GATOR_OTA_FUZZ_CASES=200000 cargo test -p gator-ota-actors --release --test adversarial
//! ```
//!
//! The seed of a failing case is saved in `adversarial.proptest-regressions`
//! beside this file and replayed first on every later run: commit it.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use gator_ota_actors::firmware::{Defaults, FirmwareJob, InvalidMessage};
use gator_ota_actors::paths::{ConfinedPath, Confinement, check_file_name};
use object_store::path::Path as ObjectPath;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseResult, TestRunner};
use serde_json::{Map, Number, Value, json};

/// Cases per property when `GATOR_OTA_FUZZ_CASES` is not set: the whole
/// file stays within a few seconds in a debug build.
const DEFAULT_CASES: u32 = 384;

fn config() -> Config {
    let cases = std::env::var("GATOR_OTA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_CASES);
    Config {
        cases,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    }
}

/// Runs `test` on `config().cases` values of `strategy`; a failure (a
/// broken property or a panic) is shrunk, saved and reported.
fn check<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> TestCaseResult) {
    let mut runner = TestRunner::new(config());
    if let Err(e) = runner.run(&strategy, test) {
        panic!("property `{name}` failed: {e}");
    }
}

// ---------------------------------------------------------------------------
// A real folder tree with links planted inside the roots.

/// ```text
/// base/                      (canonical)
///   via -> root              the root as configured: through a link
///   root/                    first root (home)
///     a/                     folder
///     a/b -> /               link to the filesystem root
///     link -> base/outside   absolute link out
///     rel -> ../outside      relative link out
///     dangling -> base/outside/missing
///     file                   a regular file
///     firmware_images/       folder
///     firmware_images/up -> ../../outside
///   root2/                   second root
///     back -> base/root      link to the other root
///   rootextra/               a sibling sharing the root's name as prefix
///   outside/                 must never change
///     secret, sub/
/// ```
struct Fixture {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    configured: PathBuf,
    root: PathBuf,
    root2: PathBuf,
    outside: PathBuf,
    confinement: Confinement,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    cases: Cell<u64>,
    accepted: Cell<u64>,
    prepared: Cell<u64>,
    written: Cell<u64>,
}

fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let root = base.join("root");
        let root2 = base.join("root2");
        let outside = base.join("outside");
        fs::create_dir_all(outside.join("sub")).unwrap();
        fs::write(outside.join("secret"), b"secret").unwrap();
        fs::create_dir(base.join("rootextra")).unwrap();
        fs::create_dir_all(root.join("a")).unwrap();
        fs::create_dir_all(root.join("firmware_images")).unwrap();
        fs::write(root.join("file"), b"file").unwrap();
        fs::create_dir(&root2).unwrap();
        let configured = base.join("via");
        symlink(&root, &configured).unwrap();
        let fx = Self {
            confinement: Confinement::new(&[configured.clone(), root2.clone()]).unwrap(),
            _tmp: tmp,
            base,
            configured,
            root,
            root2,
            outside,
            stats: Stats::default(),
        };
        fx.plant();
        assert_eq!(fx.confinement.roots(), [fx.root.clone(), fx.root2.clone()]);
        assert_eq!(fx.confinement.home(), fx.root);
        fx
    }

    fn links(&self) -> Vec<(PathBuf, PathBuf)> {
        vec![
            (self.root.join("link"), self.outside.clone()),
            (self.root.join("a/b"), PathBuf::from("/")),
            (self.root.join("rel"), PathBuf::from("../outside")),
            (self.root.join("dangling"), self.outside.join("missing")),
            (
                self.root.join("firmware_images/up"),
                PathBuf::from("../../outside"),
            ),
            (self.root2.join("back"), self.root.clone()),
        ]
    }

    /// (Re)plants every link: a simulated write may have replaced one with
    /// a file, as a rename onto a link does.
    fn plant(&self) {
        for (at, target) in self.links() {
            if fs::read_link(&at).is_ok_and(|t| t == target) {
                continue;
            }
            match fs::symlink_metadata(&at) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(&at).unwrap(),
                Ok(_) => fs::remove_file(&at).unwrap(),
                Err(_) => {}
            }
            symlink(&target, &at).unwrap();
        }
    }

    fn roots(&self) -> [&Path; 2] {
        [&self.root, &self.root2]
    }

    /// Everything under `base` except the inside of the roots: kind, size,
    /// link target and modification time, so even a file created and
    /// removed again shows (through its folder's time).
    fn snapshot(&self) -> Snapshot {
        let mut out = BTreeMap::new();
        self.walk(&self.base, &mut out);
        out
    }

    fn walk(&self, dir: &Path, out: &mut Snapshot) {
        let meta = fs::symlink_metadata(dir).unwrap();
        out.insert(dir.to_path_buf(), describe(dir, &meta));
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if self.roots().contains(&path.as_path()) {
                // A root's own time changes with every accepted write.
                out.insert(path, "root".into());
            } else if meta.is_dir() {
                self.walk(&path, out);
            } else {
                out.insert(path.clone(), describe(&path, &meta));
            }
        }
    }

    /// Fails, naming each difference, when anything outside the roots
    /// changed since `before`.
    fn unchanged(&self, before: &Snapshot, case: impl std::fmt::Display) -> TestCaseResult {
        let after = self.snapshot();
        let paths: BTreeSet<_> = before.keys().chain(after.keys()).collect();
        let changed: Vec<String> = paths
            .into_iter()
            .filter(|p| before.get(*p) != after.get(*p))
            .map(|p| format!("  {p:?}: {:?} -> {:?}", before.get(p), after.get(p)))
            .collect();
        prop_assert!(
            changed.is_empty(),
            "{case}: something outside the roots changed:\n{}",
            changed.join("\n")
        );
        Ok(())
    }

    /// Prints what the cases reached; with `must_accept`, fails when no
    /// case reached the accepting side.
    fn report(&self, name: &str, must_accept: bool) {
        let s = &self.stats;
        eprintln!(
            "{name}: {} cases, {} accepted, {} parents prepared, {} files written",
            s.cases.get(),
            s.accepted.get(),
            s.prepared.get(),
            s.written.get()
        );
        // With a meaningful number of cases the generators must reach the
        // accepting side too, or the properties above hold vacuously.
        if must_accept && s.cases.get() >= 64 {
            assert!(s.accepted.get() > 0, "{name}: no path was ever accepted");
            assert!(s.prepared.get() > 0, "{name}: no parent was ever prepared");
            assert!(s.written.get() > 0, "{name}: nothing was ever written");
        }
    }
}

/// Path → kind, size, time and link target of everything outside the roots.
type Snapshot = BTreeMap<PathBuf, String>;

fn describe(path: &Path, meta: &fs::Metadata) -> String {
    let time = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok());
    format!(
        "{:?} len={} mtime={time:?} target={:?}",
        meta.file_type(),
        meta.len(),
        fs::read_link(path).ok()
    )
}

// ---------------------------------------------------------------------------
// The checks.

/// `p` was accepted for `requested`: it must lie lexically inside a root.
fn check_confined(fx: &Fixture, requested: &str, p: &ConfinedPath) -> TestCaseResult {
    let full = p.full();
    let Some(root) = fx.roots().into_iter().find(|r| full.starts_with(r)) else {
        return Err(TestCaseError::fail(format!(
            "{requested:?} accepted as {full:?}, outside every root"
        )));
    };
    let rel = full.strip_prefix(root).unwrap();
    prop_assert!(
        !rel.as_os_str().is_empty(),
        "{requested:?} names the root itself"
    );
    prop_assert!(
        rel.components().all(|c| matches!(c, Component::Normal(_))),
        "{requested:?} accepted as {full:?} with a non-plain component"
    );
    // The same, on the text: no `..`, `.` or empty segment can hide.
    let text = full.to_str().expect("a str request gives a str path");
    let root_text = root.to_str().unwrap();
    let tail = text
        .strip_prefix(root_text)
        .and_then(|t| t.strip_prefix('/'))
        .ok_or_else(|| TestCaseError::fail(format!("{text:?} does not start with {root_text}/")))?;
    prop_assert!(
        tail.split('/')
            .all(|s| !s.is_empty() && s != "." && s != ".." && s.len() <= 255),
        "{requested:?} accepted as {text:?}"
    );
    prop_assert!(!text.contains('\0'), "NUL accepted in {requested:?}");
    prop_assert!(requested.len() <= 1024, "a {}-byte path", requested.len());
    // An absolute request stays exactly itself; a relative one hangs from
    // the first root.
    if requested.starts_with('/') {
        prop_assert_eq!(&full, Path::new(requested));
    } else {
        prop_assert_eq!(&full, &fx.root.join(requested));
    }
    prop_assert_eq!(Some(p.file_name()), full.file_name());
    Ok(())
}

/// Prepares `p`'s parent on the real tree and writes a file there the way
/// the writer does (a temporary renamed onto the name): the parent must
/// resolve inside the root, a link on the way must be refused, and the
/// file must land inside the root.
fn check_prepared(fx: &Fixture, p: &ConfinedPath) -> TestCaseResult {
    let full = p.full();
    let root = *fx.roots().iter().find(|r| full.starts_with(r)).unwrap();
    let parent = full.parent().unwrap();
    // Is there a link (or a non-folder) on the way, as the tree is now?
    let mut through_link = false;
    let mut dir = root.to_path_buf();
    for c in parent.strip_prefix(root).unwrap().components() {
        dir.push(c);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(m) => {
                through_link = m.file_type().is_symlink();
                break;
            }
            Err(_) => break,
        }
    }
    // A refusal is always safe; what a success left behind is checked.
    let Ok(dir) = p.prepare_parent() else {
        return Ok(());
    };
    bump(&fx.stats.prepared);
    prop_assert!(!through_link, "{full:?}: prepared through a link");
    prop_assert_eq!(dir.as_path(), parent);
    let canonical = dir
        .canonicalize()
        .map_err(|e| TestCaseError::fail(format!("prepared {dir:?} cannot be resolved: {e}")))?;
    prop_assert!(
        canonical.starts_with(root),
        "{full:?}: parent resolves to {canonical:?}, outside {root:?}"
    );
    // The root is canonical and no folder on the way is a link.
    prop_assert_eq!(&canonical, &dir);
    let is_dir = fs::symlink_metadata(&full).is_ok_and(|m| m.is_dir());
    prop_assert!(!is_dir, "{full:?} is a folder yet was prepared");
    let staged = tempfile::Builder::new()
        .prefix(".fuzz-")
        .tempfile_in(&dir)
        .map_err(|e| TestCaseError::fail(format!("staging in {dir:?}: {e}")))?;
    staged
        .persist(&full)
        .map_err(|e| TestCaseError::fail(format!("renaming onto {full:?}: {e}")))?;
    bump(&fx.stats.written);
    let landed = full.canonicalize().unwrap();
    prop_assert!(landed.starts_with(root), "{full:?} landed at {landed:?}");
    prop_assert!(fs::symlink_metadata(&full).unwrap().is_file());
    fx.plant();
    Ok(())
}

/// The whole check of one path: resolve, confine, prepare, write, and
/// nothing outside the roots changed.
fn check_path(fx: &Fixture, requested: &str) -> TestCaseResult {
    bump(&fx.stats.cases);
    let before = fx.snapshot();
    let outcome = fx.confinement.resolve("disk_path", requested);
    if let Ok(p) = &outcome {
        bump(&fx.stats.accepted);
        check_confined(fx, requested, p)?;
        check_prepared(fx, p)?;
    }
    fx.unchanged(&before, format_args!("{requested:?}"))?;
    // Not a safety property, but one that keeps the others honest: a plain
    // relative path must be accepted.
    if is_plain_relative(requested) {
        prop_assert!(
            outcome.is_ok(),
            "plain {requested:?} refused: {:?}",
            outcome.err()
        );
    }
    Ok(())
}

fn is_plain_relative(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 1024
        && p.split('/').all(|s| {
            !s.is_empty()
                && !s.starts_with('.') // hidden names are gator-ota's own
                && s.len() <= 255
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}

fn is_plain_file_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A clean object key under `prefix` (when set).
fn is_clean_key(key: &str, prefix: &str) -> bool {
    let clean = !key.is_empty()
        && key.len() <= 1024
        && !key.bytes().any(|b| b.is_ascii_control())
        && key
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..");
    let prefix = prefix.trim_end_matches('/');
    let under = prefix.is_empty()
        || key
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('/'))
            .is_some_and(|r| !r.is_empty());
    clean && under
}

/// Everything an accepted job must satisfy, then its two files are
/// prepared and written for real.
fn check_message(
    fx: &Fixture,
    msg_id: &str,
    content: &Value,
    defaults: &Defaults,
) -> TestCaseResult {
    bump(&fx.stats.cases);
    let before = fx.snapshot();
    let outcome = FirmwareJob::from_content(msg_id, content, &fx.confinement, defaults);
    if let Ok(job) = &outcome {
        bump(&fx.stats.accepted);
        prop_assert_eq!(&job.msg_id, msg_id);
        prop_assert_eq!(Some(job.file_name.as_str()), content["file_name"].as_str());
        prop_assert!(
            is_plain_file_name(&job.file_name),
            "file_name {:?}",
            job.file_name
        );
        prop_assert_eq!(
            Some(job.cloud_path.as_str()),
            content["cloud_path"].as_str()
        );
        prop_assert!(
            is_clean_key(&job.cloud_path, &defaults.prefix),
            "cloud_path {:?} under prefix {:?}",
            job.cloud_path,
            defaults.prefix
        );
        check_object_key(&job.cloud_path)?;
        let disk_request = match content["disk_path"].as_str() {
            Some(p) => p.to_string(),
            None => format!(
                "{}/{}.bin",
                defaults.images_dir.trim_end_matches('/'),
                job.file_name
            ),
        };
        check_confined(fx, &disk_request, &job.disk_path)?;
        let config_request = content["config_path"]
            .as_str()
            .unwrap_or(&defaults.pointer_file);
        check_confined(fx, config_request, &job.config_path)?;
        prop_assert_ne!(job.disk_path.full(), job.config_path.full());
        let confirm = content.get("confirm_receipt").and_then(Value::as_bool);
        prop_assert_eq!(job.confirm_receipt, confirm.unwrap_or(true));
        prop_assert_eq!(job.expect.size, content.get("size").and_then(Value::as_u64));
        for (digest, digits) in [(&job.expect.sha256, 64), (&job.expect.md5, 32)] {
            if let Some(d) = digest {
                prop_assert!(
                    d.len() == digits && d.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                    "digest {d:?}"
                );
            }
        }
        // As the writer commits: the pointer's folder, then the image's.
        check_prepared(fx, &job.config_path)?;
        check_prepared(fx, &job.disk_path)?;
    }
    fx.unchanged(&before, content)?;
    Ok(())
}

/// The fetcher can use an accepted key, and fetches exactly the key that
/// was checked.
fn check_object_key(key: &str) -> TestCaseResult {
    match ObjectPath::parse(key) {
        Ok(parsed) => prop_assert_eq!(parsed.as_ref(), key),
        Err(e) => prop_assert!(false, "accepted {key:?} is no object key: {e}"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Generators.

/// Segments meant to slip through: traversal, look-alikes, invisible and
/// combining characters, encodings other layers might decode, shell and
/// Windows syntax.
const HOSTILE_SEGMENTS: &[&str] = &[
    "..",
    ".",
    "",
    "...",
    "....",
    " ",
    " ..",
    ".. ",
    "..\t",
    "\0",
    "..\0",
    "a\0b",
    "%00",
    "%2e%2e",
    "%2E%2E",
    "%2e",
    "%2f",
    "..%2f..",
    "%252e%252e",
    "..\\..",
    "\\",
    "\\\\server\\share",
    "C:",
    "C:\\Windows",
    "~",
    "~root",
    "$HOME",
    "${HOME}",
    "$(id)",
    "`id`",
    "\u{2215}",
    "..\u{2215}..",
    "\u{2044}",
    "\u{FF0F}",
    "\u{FF0E}\u{FF0E}",
    "\u{2024}\u{2024}",
    "\u{FE52}\u{FE52}",
    ".\u{200B}.",
    "\u{200B}",
    "\u{202E}nib.exe",
    "\u{202D}",
    "\u{200F}",
    "\u{200E}",
    "\u{FEFF}",
    "e\u{0301}",
    ".\u{0338}.",
    "\u{0300}\u{0300}\u{0300}",
    "\u{1F600}",
    "\u{1F469}\u{200D}\u{1F4BB}",
    "\u{10FFFF}",
    "\u{FFFD}",
    "\n",
    "\r\n",
    "\t",
    "\x7f",
    "\u{85}",
    "\u{2028}",
    "*",
    "?",
    ":",
    "|",
    "\"",
    "'",
    ";",
    "&",
    "-rf",
    "--",
    "#",
    "@",
    "file:",
    "proc",
    "self",
    "etc",
    "passwd",
    "tmp",
];

/// Names that exist in the fixture, so paths reach the planted links.
const PLANTED: &[&str] = &[
    "link",
    "a",
    "b",
    "a/b",
    "rel",
    "dangling",
    "file",
    "firmware_images",
    "up",
    "back",
    "outside",
    "root",
    "root2",
    "rootextra",
    "via",
    "secret",
    "sub",
];

fn long_segment() -> impl Strategy<Value = String> {
    // Around the 255-byte component limit, in 1-, 2- and 4-byte characters,
    // and well past it.
    prop_oneof![
        (250usize..=260).prop_map(|n| "x".repeat(n)),
        (125usize..=130).prop_map(|n| "\u{e9}".repeat(n)),
        (62usize..=66).prop_map(|n| "\u{1F600}".repeat(n)),
        (300usize..=600).prop_map(|n| "y".repeat(n)),
    ]
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        5 => "[a-z0-9_-][a-z0-9._-]{0,11}",
        4 => select(HOSTILE_SEGMENTS).prop_map(str::to_string),
        3 => select(PLANTED).prop_map(str::to_string),
        2 => any::<String>(),
        1 => long_segment(),
    ]
}

fn separator() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        8 => Just("/"),
        1 => select(&["//", "\\", "/./", "/../", "\0", "\u{2215}", "/\u{200B}/"][..]),
    ]
}

fn join(head: &str, segments: &[(String, &str)], tail: &str) -> String {
    let mut out = head.to_string();
    for (i, (seg, sep)) in segments.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        out.push_str(seg);
    }
    out.push_str(tail);
    out
}

/// Paths for `disk_path` / `config_path`, relative and absolute, aimed at
/// this fixture's roots, links and neighbours.
fn hostile_path(fx: &Fixture) -> BoxedStrategy<String> {
    let root = fx.root.display().to_string();
    let root2 = fx.root2.display().to_string();
    let base = fx.base.display().to_string();
    let outside = fx.outside.display().to_string();
    let configured = fx.configured.display().to_string();
    // `outside` without its leading `/`, to be reached through `a/b -> /`.
    let outside_rel = outside.trim_start_matches('/').to_string();
    let heads: Vec<String> = vec![
        String::new(),
        String::new(),
        String::new(),
        "/".into(),
        format!("{root}/"),
        format!("{root}/"),
        root.clone(),
        format!("{root}/../"),
        format!("{root}/./"),
        format!("{root}//"),
        format!("{root2}/"),
        format!("{configured}/"),
        format!("{base}/"),
        format!("{outside}/"),
        format!("{base}/rootextra/"),
        format!("{root}extra/"),
        format!("a/b/{outside_rel}/"),
        format!("{root}/a/b/{outside_rel}/"),
        format!("{root}/link/"),
        format!("{root2}/back/"),
        "link/".into(),
        "rel/".into(),
        "dangling/".into(),
        "file/".into(),
        "firmware_images/up/".into(),
        "../".into(),
        "../../../../".into(),
        "./".into(),
        "//".into(),
        "~/".into(),
        "\\".into(),
        "%2e%2e/".into(),
        "\u{FF0E}\u{FF0E}/".into(),
    ];
    let tails = &[
        "", "", "", "", "/", "/.", "/..", "\0", ".bin", "/x.bin", "\n",
    ][..];
    let structured = (
        select(heads.clone()),
        vec((segment(), separator()), 0..7),
        select(tails),
    )
        .prop_map(|(head, segs, tail)| join(&head, &segs, tail));
    // Paths around the 1024-byte limit, relative and absolute.
    let long = (
        select(heads),
        prop_oneof![Just("ab/"), Just("\u{e9}/"), Just("x/../")],
        250usize..=420,
        select(tails),
    )
        .prop_map(|(head, unit, n, tail)| format!("{head}{}f{tail}", unit.repeat(n)));
    prop_oneof![
        8 => structured,
        1 => any::<String>(),
        1 => "[a-z./\\\\%~0-9]{0,64}",
        1 => long,
    ]
    .boxed()
}

fn file_name_candidate() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Za-z0-9._-]{0,140}",
        2 => segment(),
        1 => any::<String>(),
        1 => select(&[
            ".", "..", ".bin", "-", "a/b", "a\\b", "a\0", "\u{FF41}.bin", "a\u{FF0E}bin",
            "a\u{2215}b", "gator\u{200B}.bin", "gator.bin\n", "%2e%2e",
        ][..])
        .prop_map(str::to_string),
    ]
}

const PREFIXES: &[&str] = &[
    "",
    "firmware",
    "firmware/",
    "firmware/gator/",
    "a.b/",
    "fw//",
];

fn cloud_path_candidate() -> impl Strategy<Value = String> {
    let heads = &[
        "",
        "",
        "firmware/",
        "firmware/",
        "firmware/gator/",
        "a.b/",
        "fw/",
        "firmware",
        "firmwarex/",
        "firmware//",
        "/firmware/",
        "./firmware/",
        "firmware/../",
        "firmware/./",
        "Firmware/",
        "firmware\u{2215}",
        "firmware%2f",
        "firmware\\",
        "\u{FF46}irmware/",
    ][..];
    let tails = &["", "", "", "/", "/.", "/..", "\0", ".bin"][..];
    prop_oneof![
        6 => (select(heads), vec((segment(), separator()), 0..5), select(tails))
            .prop_map(|(head, segs, tail)| join(head, &segs, tail)),
        1 => any::<String>(),
        1 => (select(heads), 1000usize..=1030).prop_map(|(h, n)| format!("{h}{}", "k".repeat(n))),
    ]
}

fn huge_string() -> impl Strategy<Value = String> {
    (
        select(&["x", "/", "../", "\u{e9}", "\u{1F600}", "\0", "a/"][..]),
        1usize..=64 * 1024,
    )
        .prop_map(|(unit, n)| unit.repeat(n))
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        segment().prop_map(Value::String),
        any::<String>().prop_map(Value::String),
    ]
}

const FIELDS: &[&str] = &[
    "file_name",
    "cloud_path",
    "disk_path",
    "config_path",
    "confirm_receipt",
    "size",
    "sha256",
    "md5",
    "id",
];

/// Any JSON value, nested a few levels, with keys often the real fields.
fn any_json() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 48, 8, |inner| {
        let key = prop_oneof![select(FIELDS).prop_map(str::to_string), any::<String>()];
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((key, inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Relative weights of a field being absent, null, valid, hostile, of any
/// type, or huge.
type Weights = [u32; 6];
/// Every field may be anything: most such messages are refused.
const WILD: Weights = [2, 1, 6, 4, 1, 1];
/// Mostly valid, so that the accepting side is reached too.
const CALM: Weights = [2, 1, 40, 2, 1, 1];
/// Valid or hostile in equal measure: the paths of a calm message.
const PROBING: Weights = [2, 1, 12, 12, 1, 1];

/// One field of a message.
fn field(
    w: Weights,
    valid: impl Strategy<Value = Value> + 'static,
    hostile: impl Strategy<Value = Value> + 'static,
) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        w[0] => Just(None),
        w[1] => Just(Some(Value::Null)),
        w[2] => valid.prop_map(Some),
        w[3] => hostile.prop_map(Some),
        w[4] => any_json().prop_map(Some),
        w[5] => huge_string().prop_map(|s| Some(Value::String(s))),
    ]
    .boxed()
}

fn string_value(s: impl Strategy<Value = String>) -> impl Strategy<Value = Value> {
    s.prop_map(Value::String)
}

/// A `firmware_image` content: every field independently good or bad,
/// either all of them wildly or with hostile values mostly in the paths.
fn message(fx: &Fixture) -> BoxedStrategy<Value> {
    prop_oneof![
        message_with(fx, [WILD; 4]),
        message_with(fx, [CALM, PROBING, PROBING, CALM]),
    ]
    .boxed()
}

/// Weights for: file_name and cloud_path, disk_path, config_path, the rest.
fn message_with(fx: &Fixture, [names, disk, config, rest]: [Weights; 4]) -> BoxedStrategy<Value> {
    let root = fx.root.display().to_string();
    let valid_disk = prop_oneof![
        "firmware_images/[a-z0-9_-]{1,12}\\.bin",
        "[a-z]{1,8}(/[a-z0-9]{1,8}){0,3}",
        "[a-z]{1,8}".prop_map(move |s| format!("{root}/images/{s}.bin")),
    ];
    let valid_config = prop_oneof![
        Just("latest_firmware.json".to_string()),
        "[a-z]{1,8}/[a-z]{1,8}\\.json",
    ];
    let fields = (
        field(
            names,
            string_value("[A-Za-z0-9_-][A-Za-z0-9._-]{0,30}"),
            string_value(file_name_candidate()),
        ),
        field(
            names,
            string_value(
                "[a-z0-9][a-z0-9._-]{0,7}(/[a-z0-9][a-z0-9._-]{0,7}){0,3}"
                    .prop_map(|key| format!("{PREFIX_SLOT}{key}")),
            ),
            string_value(cloud_path_candidate()),
        ),
        field(
            disk,
            string_value(valid_disk),
            string_value(hostile_path(fx)),
        ),
        field(
            config,
            string_value(valid_config),
            string_value(hostile_path(fx)),
        ),
        field(
            rest,
            any::<bool>().prop_map(Value::Bool),
            select(vec![
                json!("true"),
                json!(1),
                json!(0),
                json!([true]),
                json!({}),
            ]),
        ),
        field(
            rest,
            any::<u64>().prop_map(Value::from),
            prop_oneof![
                any::<i64>().prop_map(|n| Value::from(n.min(-1))),
                any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
                select(vec![json!("1024"), json!(1e3), json!(1.5), json!(u64::MAX)]),
            ],
        ),
        field(
            rest,
            string_value("[0-9a-fA-F]{64}"),
            string_value(prop_oneof![
                "[0-9a-fA-F]{60,70}",
                "[0-9a-z\u{660}-\u{669}]{64}"
            ]),
        ),
        field(
            rest,
            string_value("[0-9a-fA-F]{32}"),
            string_value(prop_oneof![
                "[0-9a-fA-F]{28,36}",
                "[0-9A-Z\u{FF10}-\u{FF19}]{32}"
            ]),
        ),
        vec((any::<String>(), json_leaf()), 0..3),
    );
    fields
        .prop_map(
            |(file_name, cloud, disk, config, confirm, size, sha, md5, extra)| {
                let mut obj = Map::new();
                for (k, v) in extra {
                    obj.insert(k, v);
                }
                for (k, v) in [
                    ("file_name", file_name),
                    ("cloud_path", cloud),
                    ("disk_path", disk),
                    ("config_path", config),
                    ("confirm_receipt", confirm),
                    ("size", size),
                    ("sha256", sha),
                    ("md5", md5),
                ] {
                    match v {
                        Some(v) => obj.insert(k.to_string(), v),
                        None => obj.remove(k),
                    };
                }
                Value::Object(obj)
            },
        )
        .boxed()
}

fn defaults(fx: &Fixture) -> impl Strategy<Value = Defaults> + use<> {
    let root = fx.root.display().to_string();
    let images = vec![
        "firmware_images".to_string(),
        "firmware_images/".to_string(),
        "deep/er/images".to_string(),
        format!("{root}/firmware_images"),
    ];
    let pointers = vec![
        "latest_firmware.json".to_string(),
        "state/latest.json".to_string(),
        format!("{root}/latest_firmware.json"),
    ];
    (select(images), select(pointers), select(PREFIXES)).prop_map(
        |(images_dir, pointer_file, prefix)| Defaults {
            images_dir,
            pointer_file,
            prefix: prefix.to_string(),
        },
    )
}

/// Stands for the carrier's prefix at the start of a valid `cloud_path`
/// until [`job_input`] draws the settings.
const PREFIX_SLOT: &str = "\u{E000}";

/// A message and the settings it is checked against; a valid `cloud_path`
/// is put under the drawn prefix.
fn job_input(fx: &Fixture) -> BoxedStrategy<(Value, Defaults)> {
    (message(fx), defaults(fx))
        .prop_map(|(mut msg, d)| {
            if let Some(Value::String(key)) = msg.get_mut("cloud_path")
                && let Some(rest) = key.strip_prefix(PREFIX_SLOT)
            {
                let prefix = d.prefix.trim_end_matches('/');
                *key = if prefix.is_empty() {
                    rest.to_string()
                } else {
                    format!("{prefix}/{rest}")
                };
            }
            (msg, d)
        })
        .boxed()
}

/// `v` as JSON text with every character of every string and key spelt as
/// a `\u` escape, so the decoder, not the text, produces the slashes, dots
/// and NULs.
fn json_escaped(v: &Value) -> String {
    fn string(s: &str) -> String {
        let mut out = String::from("\"");
        for unit in s.encode_utf16() {
            out.push_str(&format!("\\u{unit:04x}"));
        }
        out.push('"');
        out
    }
    match v {
        Value::String(s) => string(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(json_escaped).collect();
            format!("[{}]", items.join(","))
        }
        Value::Object(fields) => {
            let fields: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("{}:{}", string(k), json_escaped(v)))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------
// The properties.

#[test]
fn paths_stay_inside_the_roots() {
    let fx = Fixture::new();
    check("paths_stay_inside_the_roots", hostile_path(&fx), |p| {
        check_path(&fx, &p)
    });
    fx.report("paths_stay_inside_the_roots", true);
}

#[test]
fn known_escapes_are_refused_or_confined() {
    // The named tricks, every run, whatever the random generator draws.
    let fx = Fixture::new();
    let root = fx.root.display().to_string();
    let outside = fx.outside.display().to_string();
    let outside_rel = outside.trim_start_matches('/');
    let refused_lexically = [
        "..".to_string(),
        "../outside/x".into(),
        "a/../../outside/x".into(),
        format!("{root}/../outside/x"),
        format!("{root}extra/x"),
        root.clone(),
        format!("{root}/"),
        format!("{}/x", fx.configured.display()),
        format!("{outside}/x"),
        "/etc/passwd".into(),
        "//etc/passwd".into(),
        "a//b".into(),
        "a/./b".into(),
        "a/".into(),
        "x\0/../y".into(),
        format!("{}/x", "s".repeat(300)),
        "ab/".repeat(342) + "f",
    ];
    for bad in &refused_lexically {
        check_path(&fx, bad).unwrap_or_else(|e| panic!("{bad:?}: {e}"));
        assert!(
            fx.confinement.resolve("disk_path", bad).is_err(),
            "{bad:?} accepted"
        );
    }
    let refused_on_disk = [
        "link/x".to_string(),
        "rel/x".into(),
        "dangling/x".into(),
        "file/x".into(),
        "firmware_images/up/x".into(),
        format!("a/b/{outside_rel}/x"),
        format!("a/b/{outside_rel}/new/deeper/x"),
        format!("{root}/link/sub/x"),
        format!("{}/back/x", fx.root2.display()),
        "a".into(),
    ];
    for bad in &refused_on_disk {
        check_path(&fx, bad).unwrap_or_else(|e| panic!("{bad:?}: {e}"));
        // Refused when resolved (a hidden segment) or when prepared (a link).
        if let Ok(p) = fx.confinement.resolve("disk_path", bad) {
            assert!(p.prepare_parent().is_err(), "{bad:?} prepared");
        }
    }
    // Look-alikes are ordinary names: accepted, and kept inside.
    for odd in [
        "%2e%2e/x",
        "\u{FF0E}\u{FF0E}/x",
        "\u{202E}nib.exe",
        "~/x",
        "link\u{200B}/x",
        "link",
        "a/b",
        "dangling",
    ] {
        check_path(&fx, odd).unwrap_or_else(|e| panic!("{odd:?}: {e}"));
        assert!(fx.confinement.resolve("disk_path", odd).is_ok(), "{odd:?}");
    }
    // Look-alikes that begin with a dot are hidden names: refused.
    for hidden in ["..\u{2215}x", "..\\..\\x", ".gator-ota/jobs/1.json"] {
        check_path(&fx, hidden).unwrap_or_else(|e| panic!("{hidden:?}: {e}"));
        assert!(
            fx.confinement.resolve("disk_path", hidden).is_err(),
            "{hidden:?}"
        );
    }
}

#[test]
fn file_names_are_plain() {
    check("file_names_are_plain", file_name_candidate(), |name| {
        let accepted = check_file_name(&name).is_ok();
        prop_assert_eq!(accepted, is_plain_file_name(&name), "{:?}", name);
        Ok(())
    });
}

#[test]
fn cloud_paths_are_clean_keys_under_the_prefix() {
    let fx = Fixture::new();
    let d = |prefix: &str| Defaults {
        images_dir: "firmware_images".into(),
        pointer_file: "latest_firmware.json".into(),
        prefix: prefix.into(),
    };
    check(
        "cloud_paths_are_clean_keys_under_the_prefix",
        (cloud_path_candidate(), select(PREFIXES)),
        |(key, prefix)| {
            let content = json!({"file_name": "fw", "cloud_path": key});
            match FirmwareJob::from_content("m", &content, &fx.confinement, &d(prefix)) {
                Ok(job) => {
                    prop_assert_eq!(&job.cloud_path, &key);
                    prop_assert!(is_clean_key(&key, prefix), "{key:?} under {prefix:?}");
                    check_object_key(&key)?;
                }
                Err(InvalidMessage::BadCloudPath(_) | InvalidMessage::OutsidePrefix { .. }) => {
                    // A plain key under the prefix must not be refused.
                    let plain = key.split('/').all(|s| {
                        !s.is_empty()
                            && s != "."
                            && s != ".."
                            && s.bytes().all(|b| b.is_ascii_alphanumeric())
                    });
                    prop_assert!(
                        !(plain && is_clean_key(&key, prefix)),
                        "clean {key:?} refused under {prefix:?}"
                    );
                }
                Err(e) => return Err(TestCaseError::fail(format!("{key:?}: unexpected {e}"))),
            }
            Ok(())
        },
    );
}

#[test]
fn messages_never_escape() {
    let fx = Fixture::new();
    check(
        "messages_never_escape",
        (any::<String>(), job_input(&fx)),
        |(msg_id, (content, defaults))| check_message(&fx, &msg_id, &content, &defaults),
    );
    fx.report("messages_never_escape", true);
}

#[test]
fn arbitrary_json_never_panics() {
    let fx = Fixture::new();
    check(
        "arbitrary_json_never_panics",
        (any_json(), defaults(&fx)),
        |(content, defaults)| check_message(&fx, "m", &content, &defaults),
    );
    fx.report("arbitrary_json_never_panics", false);
}

#[test]
fn raw_payloads_never_panic() {
    // The bytes as they come off the broker, through the JSON parser, into
    // the message check: random bytes, mutated messages, deep nesting, and
    // paths spelt entirely in `\u` escapes.
    let fx = Fixture::new();
    let mutated = (
        job_input(&fx),
        vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..6),
    )
        .prop_map(|((msg, defaults), edits)| {
            let mut bytes = serde_json::to_vec(&msg).unwrap();
            for (at, byte, op) in edits {
                let i = at.index(bytes.len() + 1);
                match op {
                    0 => bytes.insert(i, byte),
                    1 if i < bytes.len() => bytes[i] = byte,
                    _ if i < bytes.len() => {
                        bytes.remove(i);
                    }
                    _ => {}
                }
            }
            (bytes, defaults)
        });
    let nested = (
        select(&["[", "{\"a\":", "{\"file_name\":", "[{\"disk_path\":"][..]),
        1usize..=20_000,
    )
        .prop_map(|(open, n)| open.repeat(n).into_bytes());
    let random = vec(any::<u8>(), 0..512);
    let escaped =
        job_input(&fx).prop_map(|(msg, defaults)| (json_escaped(&msg).into_bytes(), defaults));
    let surrogates =
        Just(br#"{"file_name":"fw","cloud_path":"a","disk_path":"\ud800/x"}"#.to_vec());
    let with_defaults = |bytes: BoxedStrategy<Vec<u8>>| (bytes, defaults(&fx)).boxed();
    check(
        "raw_payloads_never_panic",
        prop_oneof![
            2 => with_defaults(random.boxed()),
            4 => mutated.boxed(),
            1 => with_defaults(nested.boxed()),
            4 => escaped.boxed(),
            1 => with_defaults(surrogates.boxed()),
        ],
        |(bytes, defaults)| {
            if let Ok(content) = serde_json::from_slice::<Value>(&bytes) {
                check_message(&fx, "m", &content, &defaults)?;
            }
            Ok(())
        },
    );
    fx.report("raw_payloads_never_panic", false);
}

#[test]
fn huge_fields_are_refused_quickly() {
    let fx = Fixture::new();
    let d = Defaults {
        images_dir: "firmware_images".into(),
        pointer_file: "latest_firmware.json".into(),
        prefix: String::new(),
    };
    let huge = "a/".repeat(8 << 20);
    for field in [
        "file_name",
        "cloud_path",
        "disk_path",
        "config_path",
        "sha256",
        "md5",
    ] {
        let mut content = json!({"file_name": "fw", "cloud_path": "fw/x"});
        content[field] = Value::String(huge.clone());
        let started = std::time::Instant::now();
        assert!(
            FirmwareJob::from_content("m", &content, &fx.confinement, &d).is_err(),
            "a 16 MiB {field} was accepted"
        );
        assert!(
            started.elapsed().as_secs() < 5,
            "{field} took {:?}",
            started.elapsed()
        );
    }
    let deep = "[".repeat(1 << 20);
    assert!(serde_json::from_str::<Value>(&deep).is_err());
}

/// The Data Gators' own messages (`actors/src/fleet/device.rs`): any topic
/// and any content, for each of their message types, parse or are refused
/// with an error, never a panic; what is kept is a normalised MAC and text
/// of bounded length; and a registry fed only such messages stays within
/// its bound.
#[test]
fn device_messages_never_panic_and_stay_bounded() {
    use gator_ota_actors::fleet::device::{self, MAX_TEXT, Report};
    use gator_ota_actors::fleet::registry::Registry;
    let topic = prop_oneof![
        any::<String>(),
        "[0-9A-Fa-f:\\-]{0,20}".prop_map(|m| format!("datagator/tlm/{m}")),
        Just("datagator/ota/24:6F:28:AA:BB:CC".to_string()),
    ];
    let fields = prop_oneof![
        Just("STATUS_MSG"),
        Just("FIRMWARE_VERSION"),
        Just("SERVER_FW_VERSION"),
        Just("DEVICE_FW_VERSION"),
    ];
    let value = prop_oneof![
        any_json(),
        select(
            &[
                "version",
                "started",
                "finished",
                "error",
                "v1.0.1",
                "V9.99.999",
                ""
            ][..]
        )
        .prop_map(|s| json!(s)),
        (1usize..100_000).prop_map(|n| json!("x".repeat(n))),
    ];
    let content = prop_oneof![
        any_json(),
        vec((fields, value), 0..5).prop_map(|kv| Value::Object(
            kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
        )),
    ];
    let kind = select(&gator_ota_settings::DEVICE_MESSAGE_TYPES[..]);
    let registry = std::cell::RefCell::new(Registry::new(16));
    let now = Cell::new(0i64);
    check(
        "device_messages_never_panic_and_stay_bounded",
        (kind, topic, content),
        |(kind, topic, content)| {
            let Ok((mac, report)) = device::parse(kind, &topic, &content) else {
                return Ok(());
            };
            prop_assert_eq!(mac.as_str().len(), 17);
            if let Report::Error { detail } = &report {
                prop_assert!(detail.len() <= MAX_TEXT + '…'.len_utf8());
            }
            now.set(now.get() + 1);
            registry.borrow_mut().report(&mac, report, now.get(), 1000);
            prop_assert!(registry.borrow().devices.len() <= 16);
            Ok(())
        },
    );
}
