//! The crate layout's rules, checked on the source: the simulator is a
//! crate the proxy only starts — from the command line (`src/main.rs`) and
//! the demo (`src/demo.rs`, `src/demo/`) — and it depends on nothing of
//! the proxy; `AppState` is the HTTP edge's alone, every service below it
//! gets its own context; and only the command line and the demo import
//! `app`, so no import cycle runs through it. The compiler cannot say
//! "only these files may name that", so these tests read them.

use std::path::{Path, PathBuf};

const SIMULATOR: &str = "flywheel_simulator";

/// Where the product crate may name the simulator, relative to the root.
fn allowed(relative: &Path) -> bool {
    relative == Path::new("src/main.rs")
        || relative == Path::new("src/demo.rs")
        || relative.starts_with("src/demo")
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The code lines (not comments) of `src/` that contain `needle`, in
/// files `allowed` does not admit, as `path:line: text`.
fn code_naming(needle: &str, allowed: impl Fn(&Path) -> bool) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    assert!(files.len() > 50, "the product's sources were not found");
    let mut offenders = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(root).unwrap();
        if allowed(relative) {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            // Comments may mention it; code may not.
            if line.contains(needle) && !line.trim_start().starts_with("//") {
                offenders.push(format!("{}:{}: {}", relative.display(), n + 1, line.trim()));
            }
        }
    }
    offenders
}

#[test]
fn only_the_command_line_and_the_demo_use_the_simulator() {
    let offenders = code_naming(SIMULATOR, allowed);
    assert!(
        offenders.is_empty(),
        "the simulator is started only by src/main.rs and src/demo*, and \
         reached over HTTP everywhere else (ARCHITECTURE.md, \"Crates\"); \
         these lines use it:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_simulator_depends_on_nothing_of_the_proxy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("crates/simulator/Cargo.toml")).unwrap();
    let manifest: toml::Table = manifest.parse().unwrap();
    for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
        let Some(deps) = manifest.get(section).and_then(|d| d.as_table()) else {
            continue;
        };
        for (name, spec) in deps {
            let package = spec.get("package").and_then(|p| p.as_str()).unwrap_or(name);
            // A dev-dependency on the proxy would compile, and would make
            // every change of the proxy rebuild the simulator's tests.
            assert_ne!(
                package, "flywheel",
                "crates/simulator/Cargo.toml [{section}] names the proxy"
            );
        }
    }
}

/// The HTTP edge: the files whose code is route handlers, middleware or
/// the wiring that builds them. Everything else is below the edge.
const HTTP_EDGE: &[&str] = &[
    "src/state.rs",
    "src/app.rs",
    "src/server.rs",
    "src/server/",
    "src/admin.rs",
    "src/admin/",
    "src/proxy/chat.rs",
    "src/proxy/azure.rs",
    "src/proxy/models.rs",
    "src/proxy/passthrough.rs",
    "src/feedback/route.rs",
    "src/health.rs",
    "src/demo.rs",
];

fn at_the_edge(relative: &Path) -> bool {
    HTTP_EDGE.iter().any(|edge| {
        if edge.ends_with('/') {
            relative.starts_with(edge)
        } else {
            relative == Path::new(edge)
        }
    })
}

#[test]
fn only_the_http_edge_names_the_app_state() {
    let offenders = code_naming("AppState", at_the_edge);
    assert!(
        offenders.is_empty(),
        "`AppState` is the HTTP edge's state; a service below the edge takes \
         its own context, built in `Application::build` (ARCHITECTURE.md, \
         \"Service contexts\"); these lines name it:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn only_the_command_line_and_the_demo_import_the_application() {
    // What `app.rs` imports can therefore never import it back.
    let offenders = code_naming("crate::app", |relative| {
        relative == Path::new("src/app.rs") || relative == Path::new("src/demo.rs")
    });
    assert!(
        offenders.is_empty(),
        "only src/main.rs and src/demo.rs build the application; handlers \
         take `crate::state::AppState`, services their context; these lines \
         import `app`:\n{}",
        offenders.join("\n")
    );
}
