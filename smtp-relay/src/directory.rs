//! Who exists here: local domains, users, aliases and mailing lists (VRFY, EXPN, RCPT).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use smtp_proto::{Domain, Mailbox};

/// Most levels of alias nesting followed before giving up (loop protection).
const MAX_ALIAS_DEPTH: usize = 16;

/// A bad line in an aliases file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct AliasError {
    /// The file.
    pub file: String,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Where a local name leads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A local mailbox (user name, lower case).
    Local(String),
    /// An address elsewhere.
    Remote(Mailbox),
}

impl Target {
    fn sort_key(&self) -> (u8, String) {
        match self {
            Target::Local(u) => (0, u.clone()),
            Target::Remote(m) => (1, m.to_string()),
        }
    }
}

/// Local domains, users and aliases.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    domains: HashSet<String>,
    users: HashSet<String>,
    aliases: HashMap<String, Vec<String>>,
}

/// The result of looking up a local part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A user (or an alias to one target).
    User(Target),
    /// A list with these final members.
    List(Vec<Target>),
    /// No such user.
    Unknown,
}

impl Directory {
    /// A directory for `domains`; with no `users`, any local part is accepted (catch-all).
    pub fn new(domains: impl IntoIterator<Item = String>, users: impl IntoIterator<Item = String>) -> Self {
        Directory {
            domains: domains.into_iter().map(|d| d.to_lowercase()).collect(),
            users: users.into_iter().map(|u| u.to_lowercase()).collect(),
            aliases: HashMap::new(),
        }
    }

    /// Adds aliases parsed from a file in the classic `name: member, member` format.
    pub fn load_aliases(&mut self, path: &Path) -> Result<(), AliasError> {
        let text = std::fs::read_to_string(path).map_err(|e| AliasError {
            file: path.display().to_string(),
            line: 0,
            message: e.to_string(),
        })?;
        self.aliases.extend(parse_aliases(&text, &path.display().to_string())?);
        Ok(())
    }

    /// Adds one alias.
    pub fn add_alias(&mut self, name: &str, members: Vec<String>) {
        self.aliases.insert(name.to_lowercase(), members);
    }

    /// Whether mail for `domain` is delivered here.
    pub fn is_local_domain(&self, domain: &Domain) -> bool {
        matches!(domain, Domain::Name(n) if self.domains.contains(&n.to_lowercase()))
    }

    /// The local domains.
    pub fn domains(&self) -> impl Iterator<Item = &String> {
        self.domains.iter()
    }

    /// Whether local parts are restricted to configured users.
    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }

    /// Whether every local part is accepted (no users and no aliases configured).
    pub fn is_catch_all(&self) -> bool {
        self.users.is_empty() && self.aliases.is_empty()
    }

    fn user_exists(&self, name: &str) -> bool {
        self.users.is_empty() || self.users.contains(name)
    }

    /// Looks up a local part, following aliases (nested, loops cut off).
    pub fn lookup(&self, local: &str) -> Lookup {
        let name = local.to_lowercase();
        if !safe_local(&name) {
            return Lookup::Unknown;
        }
        match self.aliases.get(&name) {
            None if self.user_exists(&name) => Lookup::User(Target::Local(name)),
            None => Lookup::Unknown,
            Some(members) => {
                let mut out = Vec::new();
                let mut seen = HashSet::from([name.clone()]);
                self.expand(members, 0, &mut seen, &mut out);
                out.sort_by_key(Target::sort_key);
                out.dedup();
                if out.len() == 1 {
                    Lookup::User(out.remove(0))
                } else if out.is_empty() {
                    Lookup::Unknown
                } else {
                    Lookup::List(out)
                }
            }
        }
    }

    fn expand(&self, members: &[String], depth: usize, seen: &mut HashSet<String>, out: &mut Vec<Target>) {
        if depth >= MAX_ALIAS_DEPTH {
            tracing::warn!("alias nesting too deep; expansion cut off");
            return;
        }
        for m in members {
            if m.contains('@') {
                match Mailbox::parse(m) {
                    Ok(mb) if self.is_local_domain(mb.domain()) => {
                        self.expand(&[mb.local_part().into_owned()], depth + 1, seen, out)
                    }
                    Ok(mb) => out.push(Target::Remote(mb)),
                    Err(_) => tracing::warn!(member = %m, "bad alias member ignored"),
                }
                continue;
            }
            let name = m.to_lowercase();
            // The one check that a member can name a mailbox directory, before any use of it.
            if !safe_local(&name) {
                tracing::warn!(member = %name, "alias member is not a plain local part; ignored");
                continue;
            }
            if !seen.insert(name.clone()) {
                // An alias naming itself (directly or through others) delivers to the mailbox of
                // that name, as classic aliases do, instead of looping.
                if self.user_exists(&name) && !self.aliases.contains_key(&name) {
                    out.push(Target::Local(name));
                }
                continue;
            }
            match self.aliases.get(&name) {
                Some(next) => self.expand(next, depth + 1, seen, out),
                None if self.user_exists(&name) => out.push(Target::Local(name)),
                None => tracing::warn!(member = %name, "alias member is no known user"),
            }
        }
    }
}

/// Local parts that may name a mailbox directory: no path separators, no dots at the ends, and
/// none of the routing characters (`%`, `!`, `@`) that old relays interpreted.
pub fn safe_local(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && name.chars().all(|c| c.is_alphanumeric() || "-_+.=".contains(c))
}

/// Parses `name: member, member` lines; `#` starts a comment; a line starting with whitespace
/// continues the previous one.
pub fn parse_aliases(text: &str, file: &str) -> Result<HashMap<String, Vec<String>>, AliasError> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    let mut current: Option<(String, usize)> = None;
    let bad = |line: usize, message: &str| AliasError { file: file.to_string(), line, message: message.to_string() };
    for (i, raw) in text.lines().enumerate() {
        let lineno = i + 1;
        let line = raw.split('#').next().unwrap_or("");
        if line.trim().is_empty() {
            continue;
        }
        let (name, members) = if line.starts_with([' ', '\t']) {
            let (name, _) = current.clone().ok_or_else(|| bad(lineno, "continuation line without an alias"))?;
            (name, line.trim())
        } else {
            let (name, members) = line.split_once(':').ok_or_else(|| bad(lineno, "expected `name: member, member`"))?;
            let name = name.trim().to_lowercase();
            if !safe_local(&name) {
                return Err(bad(lineno, "alias name must be a plain local part"));
            }
            if out.contains_key(&name) {
                return Err(bad(lineno, "alias defined twice"));
            }
            current = Some((name.clone(), lineno));
            out.insert(name.clone(), Vec::new());
            (name, members.trim())
        };
        for m in members.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            let m = m.trim_start_matches('<').trim_end_matches('>');
            let ok = if m.contains('@') { Mailbox::parse(m).is_ok() } else { safe_local(&m.to_lowercase()) };
            if !ok {
                return Err(bad(lineno, &format!("bad member {m:?}")));
            }
            out.get_mut(&name).expect("inserted above").push(m.to_string());
        }
    }
    if let Some((name, line)) = out.iter().find(|(_, v)| v.is_empty()).map(|(n, _)| (n.clone(), 0)) {
        return Err(bad(line, &format!("alias {name:?} has no members")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> Directory {
        let mut d = Directory::new(["example.test".to_string()], ["alice", "bob", "carol"].map(String::from));
        let aliases = "# staff lists\npostmaster: alice\nstaff: alice, bob,\n  team\nteam: carol, staff, x@remote.test\nloop1: loop2\nloop2: loop1\nself: alice, self\n";
        d.aliases = parse_aliases(aliases, "aliases").unwrap();
        d
    }

    #[test]
    fn lookups_and_nesting() {
        let d = dir();
        assert_eq!(d.lookup("Alice"), Lookup::User(Target::Local("alice".into())));
        assert_eq!(d.lookup("postmaster"), Lookup::User(Target::Local("alice".into())));
        assert_eq!(d.lookup("nobody"), Lookup::Unknown);
        let Lookup::List(members) = d.lookup("staff") else { panic!() };
        assert_eq!(
            members,
            vec![
                Target::Local("alice".into()),
                Target::Local("bob".into()),
                Target::Local("carol".into()),
                Target::Remote(Mailbox::parse("x@remote.test").unwrap())
            ]
        );
        assert_eq!(d.lookup("loop1"), Lookup::Unknown, "a pure loop reaches nobody");
        assert_eq!(d.lookup("self"), Lookup::User(Target::Local("alice".into())));
        assert_eq!(d.lookup("../etc"), Lookup::Unknown);
        assert_eq!(d.lookup("b%other"), Lookup::Unknown);
    }

    #[test]
    fn unsafe_members_never_become_mailboxes_even_twice() {
        let mut d = Directory::new(["x.test".to_string()], Vec::<String>::new());
        let aliases = "list: \"../evil\"@x.test, \"../evil\"@x.test, ok\n";
        d.aliases = parse_aliases(aliases, "aliases").unwrap();
        assert_eq!(d.lookup("list"), Lookup::User(Target::Local("ok".into())));
    }

    #[test]
    fn catch_all_without_users() {
        let d = Directory::new(["x.test".to_string()], Vec::<String>::new());
        assert_eq!(d.lookup("anyone"), Lookup::User(Target::Local("anyone".into())));
        assert!(d.is_local_domain(&Domain::parse("X.TEST").unwrap()));
        assert!(!d.is_local_domain(&Domain::parse("[127.0.0.1]").unwrap()));
    }

    #[test]
    fn bad_lines_name_their_line() {
        let e = parse_aliases("a: b\nno colon here\n", "f").unwrap_err();
        assert_eq!((e.line, e.file.as_str()), (2, "f"));
        assert_eq!(parse_aliases("  b\n", "f").unwrap_err().line, 1);
        assert_eq!(parse_aliases("a: b\na: c\n", "f").unwrap_err().line, 2);
        assert_eq!(parse_aliases("a: b@@c\n", "f").unwrap_err().line, 1);
        assert!(parse_aliases("a:\n", "f").is_err());
    }
}
