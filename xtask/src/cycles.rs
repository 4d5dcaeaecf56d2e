//! Import cycles between the modules of a crate (`cargo xtask cycles`, part of `test`).
//!
//! Each library and binary target of the workspace is parsed with `syn`, following `mod x;`
//! to its file (`x.rs`, `x/mod.rs`, `#[path]`) and inline `mod x { .. }` blocks, whatever
//! their `cfg`. The check is textual: no type inference, no macro expansion.
//!
//! # The graph
//! A node is one module. Module M depends on module D when M names something that D
//! *defines*:
//! - a `use` of an item (`use crate::store::Store;`), or a path in M's own code or in the
//!   tokens of a macro call (`crate::batch::decide(..)`, `super::Actor`,
//!   `self::x::Y`, `store::requests::insert(..)` after `use crate::store;`);
//! - a glob import (`use crate::x::*;`) depends on the module globbed.
//!
//! Paths are resolved the way rustc resolves them: `crate`, `self` and `super` anchors,
//! names in the module's scope (its child modules, items and imports, also through glob
//! imports), and then through the `use` declarations of the modules along the path, so a
//! name reached through a re-export counts against the module that *defines* it. Paths to
//! other crates (std, tokio, ...) are not followed.
//!
//! Not edges:
//! - **From a module to itself or to its own descendants.** A parent declares, re-exports
//!   and calls into its children; that is the point of a module tree. A child naming its
//!   parent (`use super::Store`) is an edge, so a parent and a child cannot form a cycle,
//!   but two siblings can, and so can a child and its parent's outside callers.
//! - **A re-export.** `pub use` (any visibility but private) forwards a name: it creates an
//!   edge only when the module's own code also uses the name. Otherwise `store/mod.rs`
//!   re-exporting `store::actor::Actor` while calling `batch` would make every user of
//!   `crate::store::Actor` look dependent on `store` itself, and `batch` using `Actor` would
//!   make a false cycle store -> batch -> store. A path that reaches an item through a
//!   re-export counts against the item's defining module instead. An import of a module
//!   itself (`use crate::store;`) is no edge either: the paths that go through it are.
//!
//! A cycle is a strongly connected component of that graph with more than one module; each
//! is printed as the shortest cycles through its members (`store -> batch -> store`), with
//! the file and line that makes each edge.

use anyhow::{Context, Result, bail};
use proc_macro2::{TokenStream, TokenTree};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use syn::visit::Visit;

/// One library or binary target to check.
#[derive(Debug, Clone)]
pub struct Target {
    /// `package (lib)` or `package (bin NAME)`.
    pub label: String,
    /// Its root file (lib.rs, main.rs, ...).
    pub root: PathBuf,
}

/// The lib and bin targets of the workspace's members (`cargo metadata --no-deps`).
pub fn workspace_targets(root: &Path) -> Result<Vec<Target>> {
    let out = std::process::Command::new("cargo")
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(root)
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    let mut targets = Vec::new();
    for pkg in meta["packages"].as_array().into_iter().flatten() {
        let name = pkg["name"].as_str().unwrap_or("?");
        for t in pkg["targets"].as_array().into_iter().flatten() {
            let kinds: Vec<&str> = t["kind"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k.as_str())
                .collect();
            let label = if kinds
                .iter()
                .any(|k| k.ends_with("lib") || *k == "proc-macro")
            {
                format!("{name} (lib)")
            } else if kinds.contains(&"bin") {
                format!("{name} (bin {})", t["name"].as_str().unwrap_or("?"))
            } else {
                continue;
            };
            let src = t["src_path"]
                .as_str()
                .with_context(|| format!("{label}: no src_path"))?;
            targets.push(Target {
                label,
                root: PathBuf::from(src),
            });
        }
    }
    targets.sort_by(|a, b| a.label.cmp(&b.label));
    Ok(targets)
}

/// What the check found in one target.
#[derive(Debug)]
pub struct Report {
    pub label: String,
    pub modules: usize,
    pub edges: usize,
    /// Each cycle as module names, the first repeated at the end.
    pub cycles: Vec<Vec<String>>,
    /// Evidence per edge (from, to): `file:line path`.
    evidence: BTreeMap<(String, String), String>,
}

impl Report {
    /// `label: a -> b -> a` per cycle, each edge's evidence indented below it.
    pub fn render(&self, root: &Path) -> String {
        let mut s = String::new();
        for c in &self.cycles {
            let _ = writeln!(s, "{}: {}", self.label, c.join(" -> "));
            for w in c.windows(2) {
                if let Some(e) = self.evidence.get(&(w[0].clone(), w[1].clone())) {
                    let e = e.strip_prefix(&format!("{}/", root.display())).unwrap_or(e);
                    let _ = writeln!(s, "    {} -> {}: {e}", w[0], w[1]);
                }
            }
        }
        s
    }
}

/// Checks one target: parses its module tree and finds the cycles.
pub fn check(target: &Target) -> Result<Report> {
    let tree = Tree::load(&target.root)?;
    let graph = tree.edges();
    let names: Vec<String> = (0..tree.modules.len()).map(|i| tree.name(i)).collect();
    let mut adj: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); tree.modules.len()];
    let mut evidence = BTreeMap::new();
    for ((from, to), ev) in &graph {
        adj[*from].insert(*to);
        evidence.insert((names[*from].clone(), names[*to].clone()), ev.clone());
    }
    let mut cycles = Vec::new();
    for scc in tarjan(&adj) {
        if scc.len() < 2 {
            continue;
        }
        let members: BTreeSet<usize> = scc.iter().copied().collect();
        let mut seen = BTreeSet::new();
        let mut sorted: Vec<usize> = scc.clone();
        sorted.sort_by(|a, b| names[*a].cmp(&names[*b]));
        for &start in &sorted {
            if let Some(c) = shortest_cycle(&adj, &members, start) {
                // Rotate so the smallest name leads: the same cycle found from each member
                // is printed once.
                let min = (0..c.len())
                    .min_by(|a, b| names[c[*a]].cmp(&names[c[*b]]))
                    .unwrap_or(0);
                let mut rot: Vec<usize> = c[min..].iter().chain(&c[..min]).copied().collect();
                rot.push(rot[0]);
                if seen.insert(rot.clone()) {
                    cycles.push(rot.iter().map(|i| names[*i].clone()).collect());
                }
            }
        }
    }
    cycles.sort();
    Ok(Report {
        label: target.label.clone(),
        modules: tree.modules.len(),
        edges: graph.len(),
        cycles,
        evidence,
    })
}

/// The shortest cycle through `start` inside one component (breadth first), without the
/// repeated start at the end.
fn shortest_cycle(
    adj: &[BTreeSet<usize>],
    members: &BTreeSet<usize>,
    start: usize,
) -> Option<Vec<usize>> {
    let mut prev: HashMap<usize, usize> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        for &m in &adj[n] {
            if !members.contains(&m) {
                continue;
            }
            if m == start {
                let mut path = vec![n];
                let mut at = n;
                while at != start {
                    at = prev[&at];
                    path.push(at);
                }
                path.reverse();
                return Some(path);
            }
            if let std::collections::hash_map::Entry::Vacant(e) = prev.entry(m) {
                e.insert(n);
                queue.push_back(m);
            }
        }
    }
    None
}

/// Strongly connected components (Tarjan, iterative).
fn tarjan(adj: &[BTreeSet<usize>]) -> Vec<Vec<usize>> {
    let n = adj.len();
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut next = 0;
    let mut out = Vec::new();
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut work: Vec<(usize, Vec<usize>)> = Vec::new();
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        work.push((root, adj[root].iter().copied().collect()));
        while let Some((v, todo)) = work.last_mut() {
            let v = *v;
            if let Some(w) = todo.pop() {
                if index[w] == usize::MAX {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    work.push((w, adj[w].iter().copied().collect()));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some((parent, _)) = work.last() {
                low[*parent] = low[*parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut scc = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    scc.push(w);
                    if w == v {
                        break;
                    }
                }
                out.push(scc);
            }
        }
    }
    out
}

/// A path as written, with where it was written.
#[derive(Debug, Clone)]
struct RawPath {
    segments: Vec<String>,
    file: usize,
    line: usize,
}

/// One name a `use` brings into a module's scope.
#[derive(Debug)]
struct Import {
    /// The name in scope (the alias for `as`); None for a glob.
    name: Option<String>,
    /// The path after the `use`, relative to the module as written.
    target: RawPath,
    /// Visible outside the module (`pub`, `pub(crate)`, ...): a re-export.
    public: bool,
}

#[derive(Debug, Default)]
struct Module {
    /// Names from the crate root: empty for the root.
    path: Vec<String>,
    parent: Option<usize>,
    children: BTreeMap<String, usize>,
    /// Names of the items defined here (not modules).
    items: BTreeSet<String>,
    imports: Vec<Import>,
    /// Multi-segment paths in the module's own code and macro calls.
    refs: Vec<RawPath>,
    /// Every identifier in the module's own code (not its `use` items or child modules).
    idents: BTreeSet<String>,
}

struct Tree {
    modules: Vec<Module>,
    files: Vec<PathBuf>,
}

/// What a path resolves to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Resolved {
    /// An item defined in this module (or something under it, such as a variant).
    Item(usize),
    /// The module itself.
    Module(usize),
}

impl Resolved {
    fn module(self) -> usize {
        match self {
            Resolved::Item(m) | Resolved::Module(m) => m,
        }
    }
}

impl Tree {
    fn load(root: &Path) -> Result<Tree> {
        let mut tree = Tree {
            modules: vec![Module::default()],
            files: Vec::new(),
        };
        let dir = root
            .parent()
            .context("root file has no directory")?
            .to_path_buf();
        let file = tree.parse_file(root)?;
        tree.add_items(0, &file.0.items, file.1, &dir)?;
        Ok(tree)
    }

    fn parse_file(&mut self, path: &Path) -> Result<(syn::File, usize)> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file = syn::parse_file(&text).with_context(|| format!("parsing {}", path.display()))?;
        self.files.push(path.to_path_buf());
        Ok((file, self.files.len() - 1))
    }

    fn name(&self, m: usize) -> String {
        let p = &self.modules[m].path;
        if p.is_empty() {
            "crate".into()
        } else {
            p.join("::")
        }
    }

    /// Adds the items of module `m` (from file `file`); `dir` is where the files of its
    /// child modules live.
    fn add_items(&mut self, m: usize, items: &[syn::Item], file: usize, dir: &Path) -> Result<()> {
        let mut code = Collector {
            file,
            refs: Vec::new(),
            idents: BTreeSet::new(),
        };
        for item in items {
            match item {
                syn::Item::Mod(im) => self.add_mod(m, im, file, dir)?,
                syn::Item::Use(u) => {
                    let public = !matches!(u.vis, syn::Visibility::Inherited);
                    let mut out = Vec::new();
                    flatten_use(&u.tree, &mut Vec::new(), &mut out);
                    let line = u.use_token.span.start().line;
                    for (segments, name) in out {
                        self.modules[m].imports.push(Import {
                            name,
                            target: RawPath {
                                segments,
                                file,
                                line,
                            },
                            public,
                        });
                    }
                }
                other => {
                    if let Some(name) = item_name(other) {
                        self.modules[m].items.insert(name);
                    }
                    code.visit_item(other);
                }
            }
        }
        self.modules[m].refs.extend(code.refs);
        self.modules[m].idents.extend(code.idents);
        Ok(())
    }

    fn add_mod(&mut self, parent: usize, im: &syn::ItemMod, file: usize, dir: &Path) -> Result<()> {
        let name = im.ident.to_string();
        let mut path = self.modules[parent].path.clone();
        path.push(name.clone());
        let id = self.modules.len();
        self.modules.push(Module {
            path,
            parent: Some(parent),
            ..Module::default()
        });
        self.modules[parent].children.insert(name.clone(), id);
        if let Some((_, items)) = &im.content {
            return self.add_items(id, items, file, &dir.join(&name));
        }
        let explicit = im.attrs.iter().find_map(|a| {
            let syn::Meta::NameValue(nv) = &a.meta else {
                return None;
            };
            if !nv.path.is_ident("path") {
                return None;
            }
            match &nv.value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) => Some(s.value()),
                _ => None,
            }
        });
        let candidates = match &explicit {
            Some(p) => {
                // Relative to the directory of the file that holds the declaration.
                let base = self.files[file].parent().unwrap_or(dir);
                vec![base.join(p)]
            }
            None => vec![
                dir.join(format!("{name}.rs")),
                dir.join(&name).join("mod.rs"),
            ],
        };
        let Some(found) = candidates.into_iter().find(|c| c.is_file()) else {
            if im.attrs.iter().any(|a| a.path().is_ident("cfg")) {
                // Configured out on this platform, or generated: nothing to read.
                return Ok(());
            }
            bail!("{}: `mod {name};` has no file", self.files[file].display());
        };
        let (parsed, child_file) = self.parse_file(&found)?;
        // A mod.rs holds its children beside it; x.rs holds them in x/.
        let child_dir = if found.file_name().is_some_and(|f| f == "mod.rs") {
            found.parent().unwrap_or(dir).to_path_buf()
        } else {
            found.with_extension("")
        };
        self.add_items(id, &parsed.items, child_file, &child_dir)
    }

    fn is_descendant_or_self(&self, m: usize, of: usize) -> bool {
        let mut at = Some(m);
        while let Some(a) = at {
            if a == of {
                return true;
            }
            at = self.modules[a].parent;
        }
        false
    }

    /// Where the first segment of a path written in module `m` starts resolution: the
    /// module it names, plus the segments still to resolve. None for paths into other crates.
    fn anchor(&self, m: usize, segs: &[String], depth: usize) -> Option<Resolved> {
        let first = segs.first()?;
        let rest = &segs[1..];
        match first.as_str() {
            "crate" => self.walk(0, rest, depth),
            "self" => self.walk(m, rest, depth),
            "super" => {
                let mut at = self.modules[m].parent?;
                let mut rest = rest;
                while rest.first().is_some_and(|s| s == "super") {
                    at = self.modules[at].parent?;
                    rest = &rest[1..];
                }
                self.walk(at, rest, depth)
            }
            _ => {
                // A name in the module's scope: its own child, item or import; else a crate.
                if self.in_scope(m, first, depth) {
                    self.walk(m, segs, depth)
                } else {
                    None
                }
            }
        }
    }

    /// Whether `name` is declared in module `m` (directly or through a glob import).
    fn in_scope(&self, m: usize, name: &str, depth: usize) -> bool {
        let md = &self.modules[m];
        if md.children.contains_key(name) || md.items.contains(name) {
            return true;
        }
        if md.imports.iter().any(|i| i.name.as_deref() == Some(name)) {
            return true;
        }
        if depth > 16 {
            return false;
        }
        md.imports.iter().filter(|i| i.name.is_none()).any(|g| {
            matches!(self.anchor(m, &g.target.segments, depth + 1), Some(Resolved::Module(gm))
                if gm != m && self.in_scope(gm, name, depth + 1))
        })
    }

    /// Resolves `segs` starting in module `m`.
    fn walk(&self, m: usize, segs: &[String], depth: usize) -> Option<Resolved> {
        if depth > 32 {
            return Some(Resolved::Module(m));
        }
        let Some(s) = segs.first() else {
            return Some(Resolved::Module(m));
        };
        let md = &self.modules[m];
        if let Some(&c) = md.children.get(s) {
            return self.walk(c, &segs[1..], depth + 1);
        }
        if md.items.contains(s) {
            return Some(Resolved::Item(m));
        }
        if let Some(imp) = md.imports.iter().find(|i| i.name.as_deref() == Some(s)) {
            // Follow the import: its target (as written in m), then the rest.
            let mut full = imp.target.segments.clone();
            full.extend_from_slice(&segs[1..]);
            return self.anchor(m, &full, depth + 1);
        }
        for g in md.imports.iter().filter(|i| i.name.is_none()) {
            if let Some(Resolved::Module(gm)) = self.anchor(m, &g.target.segments, depth + 1)
                && gm != m
                && self.in_scope(gm, s, depth + 1)
            {
                return self.walk(gm, segs, depth + 1);
            }
        }
        // Unknown here (a macro, a generated item): count it against this module.
        Some(Resolved::Item(m))
    }

    /// The dependency edges (from, to) with the evidence of the first one seen.
    fn edges(&self) -> BTreeMap<(usize, usize), String> {
        let mut out: BTreeMap<(usize, usize), String> = BTreeMap::new();
        let mut add = |tree: &Tree, from: usize, to: usize, p: &RawPath| {
            if tree.is_descendant_or_self(to, from) {
                return;
            }
            out.entry((from, to)).or_insert_with(|| {
                format!(
                    "{}:{} `{}`",
                    tree.files[p.file].display(),
                    p.line,
                    p.segments.join("::")
                )
            });
        };
        for (m, md) in self.modules.iter().enumerate() {
            for imp in &md.imports {
                let segs = &imp.target.segments;
                let Some(r) = self.anchor(m, segs, 0) else {
                    continue;
                };
                match (&imp.name, r) {
                    // A glob depends on the module globbed (unless it only re-exports).
                    (None, Resolved::Module(g)) => {
                        if !imp.public {
                            add(self, m, g, &imp.target);
                        }
                    }
                    (None, Resolved::Item(_)) => {}
                    // An import of a module: the paths through it are the edges.
                    (Some(_), Resolved::Module(_)) => {}
                    (Some(name), Resolved::Item(d)) => {
                        if !imp.public || md.idents.contains(name) {
                            add(self, m, d, &imp.target);
                        }
                    }
                }
            }
            for p in &md.refs {
                if let Some(r) = self.anchor(m, &p.segments, 0) {
                    add(self, m, r.module(), p);
                }
            }
        }
        out
    }
}

/// The name an item defines in its module's namespace, if any.
fn item_name(item: &syn::Item) -> Option<String> {
    let id = match item {
        syn::Item::Const(i) => &i.ident,
        syn::Item::Enum(i) => &i.ident,
        syn::Item::Fn(i) => &i.sig.ident,
        syn::Item::Macro(i) => i.ident.as_ref()?,
        syn::Item::Static(i) => &i.ident,
        syn::Item::Struct(i) => &i.ident,
        syn::Item::Trait(i) => &i.ident,
        syn::Item::TraitAlias(i) => &i.ident,
        syn::Item::Type(i) => &i.ident,
        syn::Item::Union(i) => &i.ident,
        syn::Item::ExternCrate(i) => match &i.rename {
            Some((_, r)) => r,
            None => &i.ident,
        },
        _ => return None,
    };
    Some(id.to_string())
}

/// Flattens a `use` tree into (path, name in scope) pairs; name None for a glob.
fn flatten_use(
    tree: &syn::UseTree,
    prefix: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, Option<String>)>,
) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            flatten_use(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let name = n.ident.to_string();
            if name == "self" {
                // `use x::{self}` imports x under its own name.
                if let Some(last) = prefix.last() {
                    out.push((prefix.clone(), Some(last.clone())));
                }
                return;
            }
            let mut path = prefix.clone();
            path.push(name.clone());
            out.push((path, Some(name)));
        }
        syn::UseTree::Rename(r) => {
            let mut path = prefix.clone();
            path.push(r.ident.to_string());
            let alias = r.rename.to_string();
            if alias != "_" {
                out.push((path, Some(alias)));
            } else {
                // `use x::Trait as _;`: still a dependency, under no name.
                out.push((path, Some(String::new())));
            }
        }
        syn::UseTree::Glob(_) => out.push((prefix.clone(), None)),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                flatten_use(t, prefix, out);
            }
        }
    }
}

/// Collects the paths and identifiers of a module's own code.
struct Collector {
    file: usize,
    refs: Vec<RawPath>,
    idents: BTreeSet<String>,
}

impl Collector {
    fn push(&mut self, segments: Vec<String>, line: usize) {
        // One segment names something in scope already (its `use` is the edge).
        if segments.len() >= 2 {
            self.refs.push(RawPath {
                segments,
                file: self.file,
                line,
            });
        }
    }

    /// `a::b::c` sequences in a macro's tokens (which syn does not parse).
    fn scan_tokens(&mut self, tokens: TokenStream) {
        let toks: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < toks.len() {
            match &toks[i] {
                TokenTree::Group(g) => {
                    self.scan_tokens(g.stream());
                    i += 1;
                }
                TokenTree::Ident(id) => {
                    self.idents.insert(id.to_string());
                    // A path does not start right after `::` or `.` (a method or field).
                    let after_sep = i > 0
                        && matches!(&toks[i - 1], TokenTree::Punct(p) if p.as_char() == ':' || p.as_char() == '.');
                    let line = id.span().start().line;
                    let mut segs = vec![id.to_string()];
                    let mut j = i + 1;
                    while j + 2 < toks.len() && is_colon2(&toks, j) {
                        match &toks[j + 2] {
                            TokenTree::Ident(next) => {
                                segs.push(next.to_string());
                                self.idents.insert(next.to_string());
                                j += 3;
                            }
                            _ => break,
                        }
                    }
                    if !after_sep && segs.len() > 1 {
                        self.push(segs, line);
                    }
                    i = j.max(i + 1);
                }
                TokenTree::Punct(_) | TokenTree::Literal(_) => i += 1,
            }
        }
    }
}

fn is_colon2(toks: &[TokenTree], j: usize) -> bool {
    matches!((&toks.get(j), &toks.get(j + 1)),
        (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)))
            if a.as_char() == ':' && b.as_char() == ':' && a.spacing() == proc_macro2::Spacing::Joint)
}

impl<'ast> Visit<'ast> for Collector {
    fn visit_path(&mut self, p: &'ast syn::Path) {
        if p.leading_colon.is_none() {
            let segs: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
            let line = p
                .segments
                .first()
                .map(|s| s.ident.span().start().line)
                .unwrap_or(0);
            self.push(segs, line);
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_ident(&mut self, id: &'ast proc_macro2::Ident) {
        self.idents.insert(id.to_string());
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.scan_tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }

    // Items nested in functions and blocks: `use` inside a function body names things too.
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let mut out = Vec::new();
        flatten_use(&u.tree, &mut Vec::new(), &mut out);
        let line = u.use_token.span.start().line;
        for (segs, name) in out {
            if let Some(n) = &name {
                self.idents.insert(n.clone());
            }
            self.push(segs, line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crate in a temporary directory: (relative path, contents) pairs; src/lib.rs first.
    fn krate(files: &[(&str, &str)]) -> (tempfile::TempDir, Report) {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
        }
        let report = check(&Target {
            label: "t (lib)".into(),
            root: dir.path().join(files[0].0),
        })
        .unwrap();
        (dir, report)
    }

    fn cycles(files: &[(&str, &str)]) -> Vec<String> {
        let (_d, r) = krate(files);
        r.cycles.iter().map(|c| c.join(" -> ")).collect()
    }

    #[test]
    fn two_siblings_that_use_each_other_are_a_cycle() {
        let found = cycles(&[
            ("src/lib.rs", "mod a;\nmod b;\n"),
            ("src/a.rs", "use crate::b::B;\npub struct A(B);\n"),
            (
                "src/b.rs",
                "pub struct B;\npub fn f() -> crate::a::A { todo!() }\n",
            ),
        ]);
        assert_eq!(found, vec!["a -> b -> a"]);
    }

    #[test]
    fn evidence_names_file_and_line() {
        let (d, r) = krate(&[
            ("src/lib.rs", "mod a;\nmod b;\n"),
            ("src/a.rs", "use crate::b::B;\npub struct A(B);\n"),
            (
                "src/b.rs",
                "pub struct B;\n\npub fn f() -> crate::a::A { todo!() }\n",
            ),
        ]);
        let text = r.render(d.path());
        assert!(text.contains("t (lib): a -> b -> a"), "{text}");
        assert!(text.contains("a -> b: src/a.rs:1 `crate::b::B`"), "{text}");
        assert!(text.contains("b -> a: src/b.rs:3 `crate::a::A`"), "{text}");
    }

    #[test]
    fn a_parent_using_its_children_and_a_child_using_its_parent_is_no_cycle() {
        let found = cycles(&[
            ("src/lib.rs", "mod store;\nmod batch;\n"),
            (
                "src/store/mod.rs",
                "mod requests;\npub use requests::Req;\npub struct Store;\n\
                 fn f() { requests::insert(); }\n",
            ),
            (
                "src/store/requests.rs",
                "use super::Store;\npub struct Req;\npub fn insert() {}\n",
            ),
            ("src/batch.rs", "use crate::store::Req;\n"),
        ]);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn a_re_export_counts_against_the_defining_module() {
        // store re-exports actor::Actor and calls batch; batch uses crate::store::Actor.
        // Without following the re-export that would be store -> batch -> store.
        let files = [
            ("src/lib.rs", "mod store;\nmod batch;\n"),
            (
                "src/store/mod.rs",
                "mod actor;\npub use actor::Actor;\nuse crate::batch::run;\npub fn f() { run() }\n",
            ),
            ("src/store/actor.rs", "pub struct Actor;\n"),
            (
                "src/batch.rs",
                "use crate::store::Actor;\npub fn run() { let _a: Option<Actor> = None; }\n",
            ),
        ];
        assert!(cycles(&files).is_empty());
        // But a re-export that the module's own code uses is a dependency.
        let found = cycles(&[
            ("src/lib.rs", "mod a;\nmod b;\n"),
            (
                "src/a.rs",
                "pub use crate::b::B;\npub struct A;\npub fn f(_: B) {}\n",
            ),
            ("src/b.rs", "pub struct B;\nfn g() { crate::a::f(B) }\n"),
        ]);
        assert_eq!(found, vec!["a -> b -> a"]);
    }

    #[test]
    fn an_unused_re_export_of_another_module_is_no_edge() {
        let found = cycles(&[
            ("src/lib.rs", "mod a;\nmod b;\n"),
            ("src/a.rs", "pub use crate::b::B;\npub struct A;\n"),
            (
                "src/b.rs",
                "pub struct B;\nfn g() -> crate::a::A { todo!() }\n",
            ),
        ]);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn super_self_and_nested_inline_modules_resolve() {
        // outer::inner is a file under an inline module; z::helper an inline module. inner
        // names crate::z::H, which z re-exports from z::helper; helper names inner through
        // super::super.
        let found = cycles(&[
            ("src/lib.rs", "mod outer { pub mod inner; }\nmod z;\n"),
            (
                "src/outer/inner.rs",
                "pub struct I;\npub fn f() -> crate::z::H { todo!() }\n",
            ),
            (
                "src/z.rs",
                "pub use self::helper::H;\n\
                 mod helper { pub struct H(pub super::super::outer::inner::I); }\n",
            ),
        ]);
        assert_eq!(found, vec!["outer::inner -> z::helper -> outer::inner"]);
    }

    #[test]
    fn a_parent_calling_its_child_is_no_edge_even_inside_a_longer_loop() {
        // z calls its child helper, helper names a, a names z. By the rule (a module's own
        // descendants are not dependencies) this is a -> z and helper -> a only.
        let found = cycles(&[
            ("src/lib.rs", "mod a;\nmod z;\n"),
            (
                "src/a.rs",
                "pub struct A;\npub fn f() -> crate::z::Z { todo!() }\n",
            ),
            (
                "src/z.rs",
                "pub struct Z;\nfn g() { helper::h() }\n\
                 mod helper { pub fn h() { let _ = crate::a::A; } }\n",
            ),
        ]);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn paths_through_an_imported_module_and_inside_macros_count() {
        // api imports the compliance module and calls compliance::http inside a macro;
        // compliance::http uses api. compliance (mod.rs) itself uses nothing.
        let found = cycles(&[
            ("src/lib.rs", "mod api;\nmod compliance;\n"),
            (
                "src/api.rs",
                "use crate::compliance;\npub struct State;\n\
                 pub fn router() { println!(\"{:?}\", compliance::http::routes()); }\n",
            ),
            ("src/compliance/mod.rs", "pub mod http;\n"),
            (
                "src/compliance/http.rs",
                "pub fn routes() -> u8 { let _s: Option<crate::api::State> = None; 0 }\n",
            ),
        ]);
        assert_eq!(found, vec!["api -> compliance::http -> api"]);
    }

    #[test]
    fn globs_and_external_crates() {
        // A glob of a sibling is a dependency; std:: and other crates are not followed.
        let found = cycles(&[
            ("src/lib.rs", "mod a;\nmod b;\nmod c;\n"),
            (
                "src/a.rs",
                "use crate::b::*;\nuse std::collections::HashMap;\npub struct A;\n",
            ),
            (
                "src/b.rs",
                "pub struct B;\nfn g() -> super::a::A { todo!() }\n",
            ),
            (
                "src/c.rs",
                "use tokio::sync::Mutex;\npub fn f() { serde_json::json!({}); }\n",
            ),
        ]);
        assert_eq!(found, vec!["a -> b -> a"]);
    }

    #[test]
    fn a_glob_reexport_chain_reaches_the_definer() {
        // util re-exports everything of util::inner by glob; b uses crate::util::X, which is
        // defined in util::inner; util itself calls b. No cycle.
        let found = cycles(&[
            ("src/lib.rs", "mod util;\nmod b;\n"),
            (
                "src/util/mod.rs",
                "mod inner;\npub use inner::*;\npub fn u() { crate::b::f() }\n",
            ),
            ("src/util/inner.rs", "pub struct X;\n"),
            (
                "src/b.rs",
                "pub fn f() { let _x: Option<crate::util::X> = None; }\n",
            ),
        ]);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn path_attribute_and_three_module_cycles() {
        let found = cycles(&[
            (
                "src/main.rs",
                "#[path = \"other/a_impl.rs\"]\nmod a;\nmod b;\nmod c;\nfn main() {}\n",
            ),
            ("src/other/a_impl.rs", "pub fn a() { crate::b::b() }\n"),
            ("src/b.rs", "pub fn b() { crate::c::c() }\n"),
            ("src/c.rs", "pub fn c() { crate::a::a() }\n"),
        ]);
        assert_eq!(found, vec!["a -> b -> c -> a"]);
    }

    #[test]
    fn a_missing_module_file_is_an_error_unless_configured_out() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src")).unwrap();
        std::fs::write(
            dir.path().join("src/lib.rs"),
            "#[cfg(windows)]\nmod win;\nmod gone;\n",
        )
        .unwrap();
        let err = check(&Target {
            label: "t (lib)".into(),
            root: dir.path().join("src/lib.rs"),
        })
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("`mod gone;` has no file"),
            "{err:#}"
        );
    }
}
