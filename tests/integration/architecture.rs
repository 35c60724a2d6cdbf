//! The shape of `src/` that `docs/architecture.md` draws, kept by a test: no import points up
//! its layer table, the simulator stands beside the product, both stand on the ground row
//! (which imports neither), and no two sibling modules (two top-level modules, or two files
//! of one folder) import each other in a circle.
//!
//! The layer table is parsed from the document itself, so the document is the one source of
//! truth. Imports are read from the source text: `use` declarations (groups, nesting, multi-line,
//! `pub use`, `as`), and `crate::` / `super::` / `self::` paths in code; comments, string and
//! char literals and `#[cfg(test)]` items are not read. Today's exceptions are listed in
//! [`KNOWN`], each with its reason; the test also fails when one of them is gone, so the list
//! can only shrink.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::support::repo;

/// An import that breaks the shape today: `from` is a file under `src/`, `to` the module it
/// reaches, named at the level where the rule applies (`plan` for a layer, `serve::jobs` for a
/// circle inside `serve/`).
pub struct Known {
    pub from: &'static str,
    pub to: &'static str,
    pub reason: &'static str,
}

/// The import debts of today's code, each to be paid by moving code (see docs/architecture.md,
/// "Where the code does not follow yet"). Remove an entry when its import is gone.
const KNOWN: &[Known] = &[];

#[test]
fn src_follows_the_layers_in_docs_architecture() {
    let doc = std::fs::read_to_string(repo().join("docs/architecture.md"))
        .expect("docs/architecture.md is the layer table this test reads");
    let problems = check(&repo().join("src"), &doc, KNOWN);
    assert!(
        problems.is_empty(),
        "src/ does not follow docs/architecture.md:\n\n{}",
        problems.join("\n\n")
    );
}

// ---- the checker -------------------------------------------------------------------------

/// A module's path from the crate root: `[]` is `lib.rs`, `["engine", "pace"]` is
/// `engine/pace.rs`. `main.rs` is the binary; it is checked as a top-level module `main`.
type ModPath = Vec<String>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rank {
    /// Under every layer and what stands beside: anything may import it.
    Ground,
    Layer(u32),
    Beside,
}

struct Row {
    rank: Rank,
    layer: String,
}

/// One import: the file and line it is written at, the path as written, and where it leads.
#[derive(Clone, Debug)]
struct Import {
    file: String,
    line: usize,
    written: String,
    from: ModPath,
    to: ModPath,
}

/// Every problem `src_dir` has against the layer table in `doc` and the `known` exceptions,
/// each a sentence saying what, where and what to do. Empty when the shape holds.
#[allow(
    clippy::too_many_lines,
    reason = "one pass over the sources, one rule of docs/architecture.md after another"
)]
fn check(src_dir: &Path, doc: &str, known: &[Known]) -> Vec<String> {
    let rows = match parse_layers(doc) {
        Ok(rows) => rows,
        Err(e) => return vec![e],
    };
    let imports = match read_imports(src_dir) {
        Ok(i) => i,
        Err(e) => return vec![e],
    };
    let top = rows
        .values()
        .filter_map(|r| match r.rank {
            Rank::Layer(n) => Some(n),
            Rank::Ground | Rank::Beside => None,
        })
        .max()
        .unwrap_or(0);
    let mut problems = Vec::new();

    // Each top-level module, with its first file.
    let mut modules: BTreeMap<String, String> = BTreeMap::new();
    for file in files(src_dir).unwrap_or_default() {
        if let Some(m) = module_of(&file).first() {
            modules
                .entry(m.clone())
                .or_insert_with(|| file.to_string_lossy().replace('\\', "/"));
        }
    }
    for (m, file) in &modules {
        if !rows.contains_key(m) {
            problems.push(format!(
                "src/{file}: module `{m}` is in no layer of docs/architecture.md; add it to the table under `## Layers`"
            ));
        }
    }
    for m in rows.keys() {
        if !modules.contains_key(m) {
            problems.push(format!(
                "docs/architecture.md lists module `{m}`, which src/ does not have; remove it from the table under `## Layers`"
            ));
        }
    }

    let is_known = |i: &Import| {
        let key = edge_key(i);
        known
            .iter()
            .any(|k| k.from == i.file && Some(k.to) == key.as_deref())
    };

    // Layers: across top-level modules, imports point down or sideways. One report a line.
    let mut reported = BTreeSet::new();
    for i in &imports {
        if let Some(why) = layer_breach(i, &rows, top)
            && !is_known(i)
            && reported.insert((&i.file, i.line, edge_key(i)))
        {
            problems.push(format!(
                "src/{}:{}: `{}` {why}. Move what it needs down to its layer (docs/architecture.md says what lives where); a debt that must stay for now goes in KNOWN in tests/integration/architecture.rs with its reason",
                i.file, i.line, i.written
            ));
        }
    }

    // Circles: between siblings under one parent, leaving out the known exceptions.
    let graph = sibling_graph(imports.iter().filter(|i| !is_known(i)));
    for (parent, edges) in &graph {
        for circle in circles(edges) {
            let names: Vec<&str> = circle.iter().map(String::as_str).collect();
            let cycle = shortest_cycle(edges, &circle);
            let mut msg = format!(
                "import circle between {} {}; the shortest is {}:",
                if parent.is_empty() {
                    "top-level modules".to_string()
                } else {
                    format!("the files of `{}`", parent.join("::"))
                },
                names.join(", "),
                cycle.join(" -> ")
            );
            for hop in cycle.windows(2) {
                let (a, b) = (&hop[0], &hop[1]);
                let mut lines = BTreeSet::new();
                let sites = &edges[&(a.clone(), b.clone())];
                for i in sites.iter().filter(|i| lines.insert((&i.file, i.line))) {
                    let _ = write!(
                        msg,
                        "\n  src/{}:{} `{}` ({a} -> {b})",
                        i.file, i.line, i.written
                    );
                }
            }
            msg.push_str("\nBreak it by moving the shared item down to a module both can import");
            problems.push(msg);
        }
    }

    // The known list only shrinks: each entry must still be an import that breaks the shape.
    let all = sibling_graph(imports.iter());
    for k in known {
        let found: Vec<&Import> = imports
            .iter()
            .filter(|i| i.file == k.from && edge_key(i).as_deref() == Some(k.to))
            .collect();
        let still = found
            .iter()
            .any(|i| layer_breach(i, &rows, top).is_some() || closes_circle(i, &all));
        if !still {
            let now = if found.is_empty() {
                format!("src/{} no longer imports `{}`", k.from, k.to)
            } else {
                format!(
                    "src/{} -> `{}` no longer points up the layers nor closes a circle",
                    k.from, k.to
                )
            };
            problems.push(format!(
                "KNOWN lists `{} -> {}` ({}), but {now}: well done, remove the entry from KNOWN in tests/integration/architecture.rs and its mention in docs/architecture.md",
                k.from, k.to, k.reason
            ));
        }
    }
    problems
}

/// The rows of the table under `## Layers`: `| rank | layer | modules | ... |`, where rank is a
/// number (0 at the bottom), `ground` (under them all) or `beside`, and every `name` in backticks in the modules cell is
/// a top-level module.
fn parse_layers(doc: &str) -> Result<BTreeMap<String, Row>, String> {
    let fail = |what: &str| {
        Err(format!(
            "docs/architecture.md: {what}; the architecture test reads its layers from there"
        ))
    };
    let Some(start) = doc.lines().position(|l| l.trim() == "## Layers") else {
        return fail("no `## Layers` heading");
    };
    let table: Vec<Vec<String>> = doc
        .lines()
        .skip(start + 1)
        .skip_while(|l| !l.trim_start().starts_with('|'))
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    let Some(header) = table.first() else {
        return fail("no table under `## Layers`");
    };
    let separator = |row: &Vec<String>| {
        row.iter()
            .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':')))
    };
    if !table.get(1).is_some_and(separator) {
        return fail("the table under `## Layers` has no `|---|` line under its header");
    }
    let col = |name: &str| header.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (Some(rank_col), Some(layer_col), Some(mod_col)) =
        (col("rank"), col("layer"), col("modules"))
    else {
        return fail("the table under `## Layers` needs the columns `rank`, `layer` and `modules`");
    };
    let mut rows = BTreeMap::new();
    for (n, cells) in table.iter().enumerate().skip(2) {
        let cell = |c: usize| cells.get(c).map_or("", String::as_str);
        let rank = match cell(rank_col) {
            "beside" => Rank::Beside,
            "ground" => Rank::Ground,
            r => match r.parse() {
                Ok(n) => Rank::Layer(n),
                Err(_) => {
                    return fail(&format!(
                        "row {} of the layer table has rank `{r}`, expected a number, `ground` or `beside`",
                        n - 1
                    ));
                }
            },
        };
        let names: Vec<&str> = cell(mod_col).split('`').skip(1).step_by(2).collect();
        if names.is_empty() {
            return fail(&format!(
                "row {} of the layer table names no `module`",
                n - 1
            ));
        }
        for name in names {
            let row = Row {
                rank,
                layer: cell(layer_col).to_string(),
            };
            if rows.insert(name.to_string(), row).is_some() {
                return fail(&format!(
                    "module `{name}` is in two rows of the layer table"
                ));
            }
        }
    }
    if rows.is_empty() {
        return fail("the table under `## Layers` has no rows");
    }
    Ok(rows)
}

/// Why an import breaks the layers, if it does.
#[allow(
    clippy::many_single_char_names,
    reason = "a and b are the two ends of an import, ra and rb their rows"
)]
fn layer_breach(i: &Import, rows: &BTreeMap<String, Row>, top: u32) -> Option<String> {
    let (a, b) = (i.from.first()?, i.to.first()?);
    if a == b {
        return None;
    }
    let (ra, rb) = (rows.get(a)?, rows.get(b)?);
    let name = |m: &str, r: &Row| match r.rank {
        Rank::Layer(n) => format!("`{m}` (layer {n}, {})", r.layer),
        Rank::Beside => format!("`{m}` ({}, beside the product)", r.layer),
        Rank::Ground => format!("`{m}` ({}, the ground row)", r.layer),
    };
    match (ra.rank, rb.rank) {
        (_, Rank::Ground) => None,
        (Rank::Ground, _) => Some(format!(
            "makes {} depend on {}: the ground row imports nothing of the product or the stand-in",
            name(a, ra),
            name(b, rb)
        )),
        (Rank::Beside, _) => Some(format!(
            "makes {} depend on {}: what stands beside the product imports nothing of it",
            name(a, ra),
            name(b, rb)
        )),
        (Rank::Layer(n), Rank::Beside) if n != top => Some(format!(
            "makes {} depend on {}: only the top layer ({top}) may start what stands beside the product",
            name(a, ra),
            name(b, rb)
        )),
        (Rank::Layer(x), Rank::Layer(y)) if y > x => Some(format!(
            "points up the layers: {} imports {}",
            name(a, ra),
            name(b, rb)
        )),
        _ => None,
    }
}

/// The module an import is counted against: `to` cut one below the nearest module the two
/// sides share (`plan`, `serve::jobs`). None between a module and its own ancestors or
/// descendants (a folder's `mod.rs` and its files), which is never a breach.
fn edge_key(i: &Import) -> Option<String> {
    let (parent, _, b) = siblings(i)?;
    let mut key = parent.to_vec();
    key.push(b.to_string());
    Some(key.join("::"))
}

fn siblings(i: &Import) -> Option<(&[String], &str, &str)> {
    let p = i.from.iter().zip(&i.to).take_while(|(a, b)| a == b).count();
    if p == i.from.len() || p == i.to.len() {
        return None;
    }
    Some((&i.from[..p], &i.from[p], &i.to[p]))
}

type Edges<'a> = BTreeMap<(String, String), Vec<&'a Import>>;

/// Per parent module, the imports between its children (`a -> b`), with where each is written.
fn sibling_graph<'a>(imports: impl Iterator<Item = &'a Import>) -> BTreeMap<ModPath, Edges<'a>> {
    let mut graph: BTreeMap<ModPath, Edges<'a>> = BTreeMap::new();
    for i in imports {
        if let Some((parent, a, b)) = siblings(i) {
            graph
                .entry(parent.to_vec())
                .or_default()
                .entry((a.to_string(), b.to_string()))
                .or_default()
                .push(i);
        }
    }
    graph
}

/// The groups of siblings that reach each other (strongly connected, more than one member).
fn circles(edges: &Edges) -> Vec<BTreeSet<String>> {
    let nodes: BTreeSet<&String> = edges.keys().flat_map(|(a, b)| [a, b]).collect();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for n in &nodes {
        if seen.contains(*n) {
            continue;
        }
        let group: BTreeSet<String> = nodes
            .iter()
            .filter(|m| reaches(edges, n, m) && reaches(edges, m, n))
            .map(|m| (*m).clone())
            .collect();
        seen.extend(group.iter().cloned());
        if group.len() > 1 {
            out.push(group);
        }
    }
    out
}

/// The shortest way round a circle, from its first member back to it (`a -> b -> a`).
fn shortest_cycle(edges: &Edges, members: &BTreeSet<String>) -> Vec<String> {
    let Some(start) = members.first() else {
        return Vec::new();
    };
    let mut came_from: BTreeMap<&String, &String> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        for (_, b) in edges.keys().filter(|(a, b)| a == n && members.contains(b)) {
            if b == start {
                // Back from `n` to `start` (the one member reached from nowhere), then close.
                let mut path = vec![n.clone()];
                let mut at = n;
                while let Some(prev) = came_from.get(at) {
                    path.push((*prev).clone());
                    at = prev;
                }
                path.reverse();
                path.push(start.clone());
                return path;
            }
            if !came_from.contains_key(b) {
                came_from.insert(b, n);
                queue.push_back(b);
            }
        }
    }
    Vec::new()
}

fn reaches(edges: &Edges, from: &str, to: &str) -> bool {
    let mut stack = vec![from.to_string()];
    let mut seen = BTreeSet::new();
    while let Some(n) = stack.pop() {
        if n == to {
            return true;
        }
        if seen.insert(n.clone()) {
            stack.extend(
                edges
                    .keys()
                    .filter(|(a, _)| *a == n)
                    .map(|(_, b)| b.clone()),
            );
        }
    }
    false
}

/// Whether an import between siblings closes a circle: its target reaches back to its source.
fn closes_circle(i: &Import, graph: &BTreeMap<ModPath, Edges>) -> bool {
    let Some((parent, a, b)) = siblings(i) else {
        return false;
    };
    graph.get(parent).is_some_and(|edges| reaches(edges, b, a))
}

// ---- reading the source ------------------------------------------------------------------

fn files(src_dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let mut dirs = vec![src_dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        for entry in entries {
            let path = entry
                .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
                .path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path.strip_prefix(src_dir).unwrap_or(&path).to_path_buf());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `plan.rs` -> `[plan]`, `cmd/mod.rs` -> `[cmd]`, `engine/pace.rs` -> `[engine, pace]`,
/// `lib.rs` -> `[]`, `main.rs` -> `[main]`.
fn module_of(file: &Path) -> ModPath {
    let mut parts: Vec<String> = file
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") || parts == ["lib"] {
        parts.pop();
    }
    parts
}

/// One path a `use` declaration brings in: its segments as written, the name it binds, and
/// whether the declaration is public (a re-export).
#[derive(Debug, PartialEq)]
struct UsePath {
    segments: Vec<String>,
    name: String,
    public: bool,
    line: usize,
}

/// Every import of every file under `src_dir`, resolved to the module it leads to.
fn read_imports(src_dir: &Path) -> Result<Vec<Import>, String> {
    let mut parsed = Vec::new();
    for file in files(src_dir)? {
        let text = std::fs::read_to_string(src_dir.join(&file))
            .map_err(|e| format!("cannot read src/{}: {e}", file.display()))?;
        let code = without_test_items(&code_only(&text));
        let (uses, rest) = use_declarations(&code);
        let roots: &[&str] = if file == Path::new("main.rs") {
            &["crate", "super", "self", "plasma_batch"]
        } else {
            &["crate", "super", "self"]
        };
        let paths = code_paths(&rest, roots);
        let name = file.to_string_lossy().replace('\\', "/");
        parsed.push((name, module_of(&file), uses, paths));
    }
    let modules: BTreeSet<ModPath> = parsed.iter().map(|(_, m, _, _)| m.clone()).collect();
    // `pub use` in a module: what a path through that module's name really leads to.
    let mut reexports: BTreeMap<(ModPath, String), Vec<String>> = BTreeMap::new();
    for (_, module, uses, _) in &parsed {
        for u in uses.iter().filter(|u| u.public) {
            if let Some(abs) = absolute(module, &u.segments, &modules) {
                reexports.insert((module.clone(), u.name.clone()), abs);
            }
        }
    }
    let mut imports = Vec::new();
    for (file, module, uses, paths) in &parsed {
        let written = uses
            .iter()
            .map(|u| (u.line, &u.segments))
            .chain(paths.iter().map(|(l, s)| (*l, s)));
        for (line, segments) in written {
            let Some(abs) = absolute(module, segments, &modules) else {
                continue;
            };
            let to = descend(&abs, &modules, &reexports, 0);
            if !to.is_empty() {
                imports.push(Import {
                    file: file.clone(),
                    line,
                    written: segments.join("::"),
                    from: module.clone(),
                    to,
                });
            }
        }
    }
    Ok(imports)
}

/// A written path made absolute (from the crate root), or None for another crate's path.
fn absolute(
    module: &ModPath,
    segments: &[String],
    modules: &BTreeSet<ModPath>,
) -> Option<Vec<String>> {
    let first = segments.first()?;
    let mut base: Vec<String>;
    let mut rest = &segments[1..];
    match first.as_str() {
        "crate" | "plasma_batch" => base = Vec::new(),
        "self" => base = module.clone(),
        "super" => {
            base = module.clone();
            base.pop();
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        // A bare name is a child module (`use state::Core;` in `sim/mod.rs`) or another crate.
        name => {
            let mut child = module.clone();
            child.push(name.to_string());
            if !modules.contains(&child) {
                return None;
            }
            base = module.clone();
            rest = segments;
        }
    }
    base.extend(rest.iter().filter(|s| *s != "self").cloned());
    Some(base)
}

/// The deepest module an absolute path names, following a module's `pub use` of its own
/// children (a folder re-exporting what its files define).
fn descend(
    path: &[String],
    modules: &BTreeSet<ModPath>,
    reexports: &BTreeMap<(ModPath, String), Vec<String>>,
    depth: u32,
) -> ModPath {
    let mut at: ModPath = Vec::new();
    for seg in path {
        let mut child = at.clone();
        child.push(seg.clone());
        if modules.contains(&child) {
            at = child;
            continue;
        }
        if let Some(target) = reexports.get(&(at.clone(), seg.clone()))
            && depth < 8
            && target.starts_with(&at)
            && target.len() > at.len() + 1
        {
            return descend(target, modules, reexports, depth + 1);
        }
        break;
    }
    at
}

/// The source with comments and the contents of string and char literals blanked out (lines
/// and columns kept), so only code is read.
fn code_only(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
            continue;
        }
        if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
            continue;
        }
        // Raw strings: r"..", r#".."#, br"..", cr"..".
        if i == 0 || !ident(c[i - 1]) {
            let mut j = i;
            if matches!(c[j], 'b' | 'c') && c.get(j + 1) == Some(&'r') {
                j += 1;
            }
            if c[j] == 'r' {
                let mut k = j + 1;
                while c.get(k) == Some(&'#') {
                    k += 1;
                }
                let hashes = k - j - 1;
                if c.get(k) == Some(&'"') {
                    let close: Vec<char> = std::iter::once('"')
                        .chain(std::iter::repeat_n('#', hashes))
                        .collect();
                    let mut end = k + 1;
                    while end < c.len() && !c[end..].starts_with(&close) {
                        end += 1;
                    }
                    let end = (end + close.len()).min(c.len());
                    out.extend(c[i..end].iter().map(|&ch| blank(ch)));
                    i = end;
                    continue;
                }
            }
        }
        if c[i] == '"' {
            out.push(' ');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' && i + 1 < c.len() {
                    out.push(' ');
                    i += 1;
                }
                out.push(blank(c[i]));
                i += 1;
            }
            out.push(' ');
            i += 1;
            continue;
        }
        // A char literal ('x', '\n', '\'', '\u{..}'); a lifetime or label ('a) is code.
        if c[i] == '\'' {
            let end = if next == Some('\\') {
                (i + 3..c.len()).find(|&j| c[j] == '\'')
            } else if c.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            if let Some(end) = end {
                out.extend(c[i..=end].iter().map(|&ch| blank(ch)));
                i = end + 1;
                continue;
            }
        }
        out.push(c[i]);
        i += 1;
    }
    out
}

/// Blanks each `#[cfg(test)]` item (test modules, test-only imports): their imports are not
/// the product's.
fn without_test_items(code: &str) -> String {
    let mut out: Vec<char> = code.chars().collect();
    let marker: Vec<char> = "#[cfg(test)]".chars().collect();
    let mut i = 0;
    while i + marker.len() <= out.len() {
        if out[i..].starts_with(&marker) {
            let mut j = i + marker.len();
            let mut depth = 0i32;
            while j < out.len() {
                match out[j] {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            j += 1;
                            break;
                        }
                    }
                    ';' if depth == 0 => {
                        j += 1;
                        break;
                    }
                    _ => {}
                }
                j += 1;
            }
            for ch in &mut out[i..j] {
                if *ch != '\n' {
                    *ch = ' ';
                }
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out.into_iter().collect()
}

fn is_ident(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

/// The `use` declarations of a file (after `code_only`), and the code with them blanked.
fn use_declarations(code: &str) -> (Vec<UsePath>, String) {
    let c: Vec<char> = code.chars().collect();
    let mut rest = c.clone();
    let mut uses = Vec::new();
    let mut i = 0;
    while i + 3 <= c.len() {
        let word = c[i..i + 3] == ['u', 's', 'e']
            && (i == 0 || !is_ident(c[i - 1]))
            && c.get(i + 3).is_none_or(|ch| !is_ident(*ch));
        // `impl Trait + use<'a>` (precise capturing) is not a declaration.
        let capturing = c[i + 3..].iter().find(|ch| !ch.is_whitespace()) == Some(&'<');
        if !word || capturing {
            i += 1;
            continue;
        }
        let Some(end) = (i..c.len()).find(|&j| c[j] == ';') else {
            break;
        };
        // Public when `pub` (or `pub(crate)`, ...) stands between the last item end and `use`.
        let start = (0..i)
            .rev()
            .find(|&j| matches!(c[j], ';' | '{' | '}'))
            .map_or(0, |j| j + 1);
        let head: String = c[start..i].iter().collect();
        let public = head.split(|ch: char| !is_ident(ch)).any(|w| w == "pub");
        let line = c[..i].iter().filter(|&&ch| ch == '\n').count() + 1;
        let tree: String = c[i + 3..end].iter().collect();
        let mut tokens = tokens(&tree);
        tokens.reverse();
        let mut paths = Vec::new();
        use_tree(&mut tokens, &[], &mut paths);
        for (segments, name) in paths {
            uses.push(UsePath {
                segments,
                name,
                public,
                line,
            });
        }
        for ch in &mut rest[i..=end] {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
        i = end + 1;
    }
    (uses, rest.into_iter().collect())
}

#[derive(Debug, PartialEq)]
enum Tok {
    Ident(String),
    Path,
    Open,
    Close,
    Comma,
    Star,
}

fn tokens(tree: &str) -> Vec<Tok> {
    let c: Vec<char> = tree.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            ':' if c.get(i + 1) == Some(&':') => {
                out.push(Tok::Path);
                i += 2;
                continue;
            }
            '{' => out.push(Tok::Open),
            '}' => out.push(Tok::Close),
            ',' => out.push(Tok::Comma),
            '*' => out.push(Tok::Star),
            ch if is_ident(ch) => {
                let start = i;
                while i < c.len() && is_ident(c[i]) {
                    i += 1;
                }
                let word: String = c[start..i].iter().collect();
                out.push(Tok::Ident(word.trim_start_matches("r#").to_string()));
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// One use tree (`a::b`, `a::{b, c::d}`, `a::*`, `a as b`), expanded into full paths with the
/// name each binds. `tokens` is reversed (next token last).
fn use_tree(tokens: &mut Vec<Tok>, prefix: &[String], out: &mut Vec<(Vec<String>, String)>) {
    let mut path = prefix.to_vec();
    loop {
        match tokens.pop() {
            Some(Tok::Open) => {
                while let Some(t) = tokens.last() {
                    match t {
                        Tok::Close => {
                            tokens.pop();
                            break;
                        }
                        Tok::Comma => {
                            tokens.pop();
                        }
                        _ => use_tree(tokens, &path, out),
                    }
                }
                return;
            }
            Some(Tok::Star) => {
                out.push((path, "*".to_string()));
                return;
            }
            Some(Tok::Ident(word)) => {
                // `a::{self, b}`: `self` is `a` itself.
                if word != "self" || path.is_empty() {
                    path.push(word);
                }
                if tokens.last() == Some(&Tok::Path) {
                    tokens.pop();
                    continue;
                }
                let mut name = path.last().cloned().unwrap_or_default();
                if matches!(tokens.last(), Some(Tok::Ident(w)) if w == "as") {
                    tokens.pop();
                    if let Some(Tok::Ident(alias)) = tokens.pop() {
                        name = alias;
                    }
                }
                out.push((path, name));
                return;
            }
            // `::a` (a leading `::`): read on.
            Some(Tok::Path) => {}
            // A path cut short (`a::}`): leave the comma or brace to the group around it.
            Some(t @ (Tok::Comma | Tok::Close)) => {
                tokens.push(t);
                return;
            }
            None => return,
        }
    }
}

/// Paths in code that start at one of `roots` (`crate::x::y(...)`, `super::z::W`), with their
/// line, skipping those that continue another path (`a::super::b`).
#[allow(
    clippy::many_single_char_names,
    reason = "a hand-written scanner: c is the text, i the cursor"
)]
fn code_paths(code: &str, roots: &[&str]) -> Vec<(usize, Vec<String>)> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < c.len() {
        if c[i] == '\n' {
            line += 1;
            i += 1;
            continue;
        }
        if !is_ident(c[i]) || (i > 0 && is_ident(c[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        while i < c.len() && is_ident(c[i]) {
            i += 1;
        }
        let word: String = c[start..i].iter().collect();
        let before = c[..start].iter().rev().find(|ch| !ch.is_whitespace());
        if !roots.contains(&word.as_str()) || before == Some(&':') {
            continue;
        }
        let mut segments = vec![word];
        let mut j = i;
        loop {
            let mut k = j;
            while k < c.len() && c[k].is_whitespace() && c[k] != '\n' {
                k += 1;
            }
            if !(c.get(k) == Some(&':') && c.get(k + 1) == Some(&':')) {
                break;
            }
            k += 2;
            while k < c.len() && c[k].is_whitespace() && c[k] != '\n' {
                k += 1;
            }
            let s = k;
            while k < c.len() && is_ident(c[k]) {
                k += 1;
            }
            if k == s {
                break;
            }
            segments.push(c[s..k].iter().collect());
            j = k;
        }
        i = j;
        if segments.len() > 1 {
            out.push((line, segments));
        }
    }
    out
}

// ---- the checker's own tests -------------------------------------------------------------

/// A small tree: `base` (layer 0) and `top` (layer 1), plus files written by each test.
const DOC: &str = "# Architecture\n\n## Layers\n\n| rank | layer | modules | owns |\n|---|---|---|---|\n| 0 | base | `base`, `other` | x |\n| 1 | top | `top` | y |\n| beside | stand-in | `side` | z |\n\nText after.\n";

fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

const CLEAN: &[(&str, &str)] = &[
    (
        "lib.rs",
        "pub mod base;\npub mod other;\npub mod side;\npub mod top;\n",
    ),
    ("base.rs", "pub struct B;\n"),
    ("other.rs", "use crate::base::B;\n"),
    ("side.rs", "pub struct S;\n"),
    (
        "top/mod.rs",
        "mod a;\nmod b;\npub use a::A;\nuse crate::side::S;\n",
    ),
    ("top/a.rs", "use super::b::Bee;\npub struct A;\n"),
    ("top/b.rs", "pub struct Bee(crate::base::B);\n"),
];

fn with(extra: &[(&'static str, &'static str)]) -> tempfile::TempDir {
    let mut files: BTreeMap<&str, &str> = CLEAN.iter().copied().collect();
    files.extend(extra.iter().copied());
    tree(&files.into_iter().collect::<Vec<_>>())
}

#[test]
fn checker_passes_a_tree_that_keeps_its_layers() {
    let dir = with(&[]);
    assert_eq!(check(dir.path(), DOC, &[]), Vec::<String>::new());
}

#[test]
fn checker_reports_an_upward_import_and_a_circle() {
    let dir = with(&[
        // Upward: layer 0 imports layer 1 (through a re-export of `top`, in a group).
        (
            "base.rs",
            "use crate::{top::{self as _, A}};\npub struct B;\n",
        ),
        // A circle inside `top/`: b -> a while a -> b.
        (
            "top/b.rs",
            "pub struct Bee(crate::base::B);\nfn f() { let _ = super::a::A; }\n",
        ),
    ]);
    let problems = check_expecting(3, dir.path(), DOC, &[]);
    says(
        &problems[0],
        &[
            "src/base.rs:1: `crate::top` points up the layers: `base` (layer 0, base) imports `top` (layer 1, top)",
        ],
    );
    // `base <-> other` is not a circle (other -> base only); `base -> top -> base` is.
    says(
        &problems[1],
        &[
            "import circle between top-level modules base, top; the shortest is base -> top -> base:",
            "src/base.rs:1 `crate::top` (base -> top)",
            "src/top/b.rs:1 `crate::base::B` (top -> base)",
        ],
    );
    says(
        &problems[2],
        &[
            "import circle between the files of `top` a, b; the shortest is a -> b -> a:",
            "src/top/b.rs:2 `super::a::A` (b -> a)",
            "src/top/a.rs:1 `super::b::Bee` (a -> b)",
        ],
    );
}

/// `check`, asserting how many problems it finds.
fn check_expecting(count: usize, src_dir: &Path, doc: &str, known: &[Known]) -> Vec<String> {
    let problems = check(src_dir, doc, known);
    assert_eq!(problems.len(), count, "{problems:#?}");
    problems
}

/// The problem starts with the first part and contains the others.
fn says(problem: &str, parts: &[&str]) {
    assert!(
        problem.starts_with(parts[0]),
        "{problem}\n\ndoes not start with\n\n{}",
        parts[0]
    );
    for part in &parts[1..] {
        assert!(
            problem.contains(part),
            "{problem}\n\ndoes not say\n\n{part}"
        );
    }
}

#[test]
fn checker_keeps_the_simulator_beside_the_product() {
    let dir = with(&[
        ("side.rs", "pub struct S(crate::base::B);\n"),
        ("other.rs", "use crate::base::B;\nuse crate::side;\n"),
    ]);
    let problems = check_expecting(2, dir.path(), DOC, &[]);
    says(
        &problems[0],
        &[
            "src/other.rs:2: `crate::side` makes `other` (layer 0, base) depend on `side` (stand-in, beside the product): only the top layer (1)",
        ],
    );
    says(
        &problems[1],
        &[
            "src/side.rs:1: `crate::base::B` makes `side` (stand-in, beside the product) depend on `base`",
        ],
    );
}

#[test]
fn product_and_simulator_may_stand_on_the_ground_row_which_imports_neither() {
    let doc = DOC.replace("| beside |", "| ground | facts | `floor` | w |\n| beside |");
    let dir = with(&[
        (
            "lib.rs",
            "pub mod base;\npub mod floor;\npub mod other;\npub mod side;\npub mod top;\n",
        ),
        ("floor.rs", "pub struct F;\n"),
        ("side.rs", "pub struct S(crate::floor::F);\n"),
        ("base.rs", "use crate::floor::F;\npub struct B(F);\n"),
    ]);
    assert_eq!(check(dir.path(), &doc, &[]), Vec::<String>::new());

    let dir = with(&[
        (
            "lib.rs",
            "pub mod base;\npub mod floor;\npub mod other;\npub mod side;\npub mod top;\n",
        ),
        (
            "floor.rs",
            "use crate::base::B;\nuse crate::side::S;\npub struct F;\n",
        ),
    ]);
    let problems = check_expecting(2, dir.path(), &doc, &[]);
    says(
        &problems[0],
        &[
            "src/floor.rs:1: `crate::base::B` makes `floor` (facts, the ground row) depend on `base` (layer 0, base): the ground row imports nothing",
        ],
    );
    says(
        &problems[1],
        &[
            "src/floor.rs:2: `crate::side::S` makes `floor` (facts, the ground row) depend on `side` (stand-in, beside the product)",
        ],
    );
}

#[test]
fn known_violations_are_allowed_and_must_still_exist() {
    let dir = with(&[("base.rs", "use crate::top::A;\npub struct B;\n")]);
    let known = [Known {
        from: "base.rs",
        to: "top",
        reason: "r",
    }];
    assert_eq!(check(dir.path(), DOC, &known), Vec::<String>::new());

    let clean = with(&[]);
    let problems = check_expecting(1, clean.path(), DOC, &known);
    says(
        &problems[0],
        &[
            "KNOWN lists `base.rs -> top` (r), but src/base.rs no longer imports `top`: well done, remove the entry",
        ],
    );
    // Still imported, but no longer a breach (the import now points down).
    let down = [Known {
        from: "other.rs",
        to: "base",
        reason: "r",
    }];
    let problems = check_expecting(1, clean.path(), DOC, &down);
    says(
        &problems[0],
        &[
            "KNOWN lists `other.rs -> base` (r), but",
            "src/other.rs -> `base` no longer points up the layers nor closes a circle",
        ],
    );
}

#[test]
fn checker_reports_modules_missing_from_the_table_and_a_table_without_layers() {
    let dir = with(&[("extra.rs", "")]);
    let problems = check_expecting(1, dir.path(), DOC, &[]);
    says(
        &problems[0],
        &["src/extra.rs: module `extra` is in no layer"],
    );
    let no_side = DOC.replace("| beside | stand-in | `side` | z |\n", "");
    let problems = check_expecting(1, with(&[]).path(), &no_side, &[]);
    says(&problems[0], &["src/side.rs: module `side` is in no layer"]);
    let extra_row = DOC.replace("| 1 | top |", "| 1 | top | `gone`, ");
    let problems = check_expecting(1, with(&[]).path(), &extra_row, &[]);
    says(
        &problems[0],
        &["docs/architecture.md lists module `gone`, which src/ does not have"],
    );
    let problems = check(with(&[]).path(), "# nothing here\n", &[]);
    assert_eq!(
        problems,
        [
            "docs/architecture.md: no `## Layers` heading; the architecture test reads its layers from there"
        ]
    );
}

#[test]
#[allow(
    clippy::needless_raw_string_hashes,
    reason = "the text holds `\"#`, so two hashes are needed; the lint misses it"
)]
fn use_trees_groups_and_paths_are_read_and_comments_and_strings_are_not() {
    let src = r##"
//! Docs that mention crate::top::A are not code.
pub(crate) use crate::{
    a::b::{self, C as D},
    e, // crate::f
};
use std::io::{self, Read};
#[cfg(test)]
use crate::test_only;
/* block crate::nope /* nested crate::no */ still comment */
fn f<'a>(x: &'a str) -> impl Sized + use<'a> {
    let _ = "crate::in_string \" crate::still";
    let _ = r#"crate::raw "quoted""#;
    let q = '"'; let r = '\''; let _ = crate::g::h(x);
    let _ = super::super::i::J; let _ = std::crate_like::x; self::k::L; q
}
#[cfg(test)]
mod tests { use crate::hidden; fn t() { crate::hidden2::x(); } }
fn g() -> impl Sized + use<> { crate::cap::x() }
"##;
    let code = without_test_items(&code_only(src));
    assert_eq!(code.lines().count(), src.lines().count(), "lines are kept");
    let (uses, rest) = use_declarations(&code);
    let got: Vec<(String, &str, bool, usize)> = uses
        .iter()
        .map(|u| (u.segments.join("::"), u.name.as_str(), u.public, u.line))
        .collect();
    assert_eq!(
        got,
        [
            ("crate::a::b".to_string(), "b", true, 3),
            ("crate::a::b::C".to_string(), "D", true, 3),
            ("crate::e".to_string(), "e", true, 3),
            ("std::io".to_string(), "io", false, 7),
            ("std::io::Read".to_string(), "Read", false, 7),
        ]
    );
    let paths: Vec<(usize, String)> = code_paths(&rest, &["crate", "super", "self"])
        .into_iter()
        .map(|(l, s)| (l, s.join("::")))
        .collect();
    assert_eq!(
        paths,
        [
            (14, "crate::g::h".to_string()),
            (15, "super::super::i::J".to_string()),
            (15, "self::k::L".to_string()),
            (19, "crate::cap::x".to_string()),
        ]
    );
}

#[test]
fn paths_resolve_through_super_bare_children_and_folder_reexports() {
    let modules: BTreeSet<ModPath> = [vec![], vec!["a"], vec!["a", "b"], vec!["a", "c"], vec!["d"]]
        .into_iter()
        .map(|m| m.into_iter().map(String::from).collect())
        .collect();
    let s = |p: &str| p.split("::").map(String::from).collect::<Vec<_>>();
    let m = |p: &str| if p.is_empty() { vec![] } else { s(p) };
    let mut reexports = BTreeMap::new();
    // `a/mod.rs`: `pub use b::Thing;` (followed), `pub use crate::d::Other;` (not: not a child).
    reexports.insert((m("a"), "Thing".to_string()), s("a::b::Thing"));
    reexports.insert((m("a"), "Other".to_string()), s("d::Other"));
    let resolve = |from: &str, path: &str| {
        absolute(&m(from), &s(path), &modules)
            .map(|abs| descend(&abs, &modules, &reexports, 0).join("::"))
    };
    assert_eq!(resolve("a::c", "super::b::X"), Some("a::b".into()));
    assert_eq!(resolve("a::c", "super::super::d::Y"), Some("d".into()));
    assert_eq!(
        resolve("a", "b::Z"),
        Some("a::b".into()),
        "a bare child name"
    );
    assert_eq!(resolve("a", "serde::Serialize"), None, "another crate");
    assert_eq!(resolve("d", "crate::a::Thing"), Some("a::b".into()));
    assert_eq!(resolve("d", "crate::a::Other"), Some("a".into()));
    assert_eq!(
        resolve("main", "plasma_batch::a::c::F"),
        Some("a::c".into())
    );
    assert_eq!(module_of(Path::new("a/mod.rs")), m("a"));
    assert_eq!(module_of(Path::new("a/b.rs")), m("a::b"));
    assert_eq!(module_of(Path::new("lib.rs")), m(""));
    assert_eq!(module_of(Path::new("main.rs")), m("main"));
}
