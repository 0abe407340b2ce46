//! Segment globs on the normalised request path: `*` within a segment matches any characters but
//! `/`, a whole segment `**` matches any number of segments (none included). No regexes: a glob
//! is compiled once, when the configuration is loaded, into a list of segment matchers.

use std::fmt;

/// One segment of a glob.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// A literal segment.
    Lit(String),
    /// A segment with `*` wildcards: the literal pieces between them (first and last may be "").
    Wild(Vec<String>),
    /// `**`: any number of segments.
    Deep,
}

/// A compiled path glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    text: String,
    segs: Vec<Seg>,
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Glob {
    /// Compiles `text`. The error says what is wrong, for `check-config`.
    pub fn parse(text: &str) -> Result<Glob, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("{text:?} must start with '/'"));
        };
        if text.bytes().any(|b| {
            matches!(
                b,
                b'?' | b'[' | b']' | b'{' | b'}' | b'\\' | b'#' | b'%' | b';'
            ) || b.is_ascii_control()
                || b == b' '
        }) {
            return Err(format!(
                "{text:?}: only literal characters, '*' and '**' are allowed (no ?, [], {{}}, \\, #, %, ';', spaces)"
            ));
        }
        let mut segs = Vec::new();
        if !rest.is_empty() && rest.split('/').any(str::is_empty) {
            return Err(format!(
                "{text:?}: empty segment ('//' or a trailing '/'): a normalised path has none, and \"/x\" already matches \"/x/\""
            ));
        }
        for s in rest.split('/') {
            if s == "**" {
                if segs.last() != Some(&Seg::Deep) {
                    segs.push(Seg::Deep);
                }
            } else if s.contains("**") {
                return Err(format!(
                    "{text:?}: '**' must be a whole segment (\"/a/**\", not \"/a**\")"
                ));
            } else if s == "." || s == ".." {
                return Err(format!(
                    "{text:?}: dot segments never occur in a normalised path"
                ));
            } else if s.contains('*') {
                segs.push(Seg::Wild(s.split('*').map(str::to_string).collect()));
            } else {
                segs.push(Seg::Lit(s.to_string()));
            }
        }
        Ok(Glob {
            text: text.to_string(),
            segs,
        })
    }

    /// The glob as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the normalised `path` matches (pass it percent-decoded: see
    /// [`crate::policy::Policy::decide`]). A `;parameter` on the last segment is ignored (some
    /// servers strip it: `/admin;x` is `/admin` to them, so it must be to the rules), and so is
    /// one trailing slash (`/metrics/` is `/metrics` to most apps).
    pub fn matches(&self, path: &str) -> bool {
        if self.matches_exactly(path) {
            return true;
        }
        match path.strip_suffix('/') {
            Some(p) if !p.is_empty() => self.matches_exactly(p),
            _ => false,
        }
    }

    fn matches_exactly(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let rest = match rest.rfind('/') {
            Some(slash) => match rest[slash..].find(';') {
                Some(semi) => &rest[..slash + semi],
                None => rest,
            },
            None => rest.split(';').next().unwrap_or_default(),
        };
        match_segs(&self.segs, Some(rest))
    }

    /// Whether every path this glob matches is matched by `other` too (a sufficient check, for
    /// the shadowed-rule errors): segment by segment, `other`'s segment equals ours or is a bare
    /// `*` (any one segment) covering a literal or wildcard one of ours; a trailing `**` of
    /// `other` covers whatever of ours is left.
    pub fn covered_by(&self, other: &Glob) -> bool {
        fn star(s: &Seg) -> bool {
            matches!(s, Seg::Wild(p) if p.iter().all(String::is_empty))
        }
        let mut mine = self.segs.iter();
        for (i, theirs) in other.segs.iter().enumerate() {
            if *theirs == Seg::Deep && i + 1 == other.segs.len() {
                return true;
            }
            match mine.next() {
                Some(m) if m == theirs => {}
                Some(m) if star(theirs) && *m != Seg::Deep => {}
                _ => return false,
            }
        }
        mine.next().is_none()
    }
}

/// Whether `segs` match the segments of `path` (`Some(rest)`: the path after its leading slash;
/// `Some("")` is one empty segment, as in `/`). The classic wildcard algorithm with `**` as the
/// star and one segment as the character: it remembers only the last `**` and retries from it,
/// so the time is at most segments × glob length (no exponential backtracking on a hostile
/// path), and it walks the path in place (no allocation).
fn match_segs(segs: &[Seg], path: Option<&str>) -> bool {
    let mut i = 0; // next glob segment
    let mut at = path; // path segments left
    let mut star: Option<(usize, Option<&str>)> = None; // last `**`, and where it resumes
    loop {
        if let Some(s) = at {
            let (head, tail) = first_segment(s);
            match segs.get(i) {
                Some(Seg::Deep) => {
                    star = Some((i, at));
                    i += 1;
                    continue;
                }
                Some(seg) if seg_matches(seg, head) => {
                    i += 1;
                    at = tail;
                    continue;
                }
                _ => {}
            }
            // Mismatch: let the last `**` swallow one more segment, or fail.
            match star {
                Some((si, Some(r))) => {
                    let next = first_segment(r).1;
                    star = Some((si, next));
                    i = si + 1;
                    at = next;
                }
                _ => return false,
            }
        } else {
            // The path is used up: only `**` may be left.
            return segs[i.min(segs.len())..].iter().all(|g| *g == Seg::Deep);
        }
    }
}

/// The first segment of `s` and what follows its slash (`None`: it was the last).
fn first_segment(s: &str) -> (&str, Option<&str>) {
    match s.split_once('/') {
        Some((head, tail)) => (head, Some(tail)),
        None => (s, None),
    }
}

fn seg_matches(seg: &Seg, p: &str) -> bool {
    match seg {
        Seg::Lit(l) => l == p,
        Seg::Deep => true,
        Seg::Wild(pieces) => {
            let (first, tail) = match pieces.split_first() {
                Some(x) => x,
                None => return true,
            };
            let Some(mut left) = p.strip_prefix(first.as_str()) else {
                return false;
            };
            let Some((last, middle)) = tail.split_last() else {
                return true;
            };
            for m in middle {
                match left.find(m.as_str()) {
                    Some(i) => left = &left[i + m.len()..],
                    None => return false,
                }
            }
            left.len() >= last.len() && left.ends_with(last.as_str())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> Glob {
        Glob::parse(s).unwrap()
    }

    #[test]
    fn globs_match_whole_segments_and_deep_wildcards() {
        assert!(g("/api/health").matches("/api/health"));
        assert!(!g("/api/health").matches("/api/health/x"));
        assert!(!g("/api/health").matches("/api/healthz"));
        assert!(g("/api/health").matches("/api/health;jsessionid=1"));
        assert!(g("/static/**").matches("/static"));
        assert!(g("/static/**").matches("/static/"));
        assert!(g("/static/**").matches("/static/a/b.css"));
        assert!(!g("/static/**").matches("/staticx/a"));
        assert!(g("/*/edit").matches("/doc/edit"));
        assert!(!g("/*/edit").matches("/a/b/edit"));
        assert!(g("/**/edit").matches("/a/b/edit"));
        assert!(g("/**/edit").matches("/edit"));
        assert!(g("/assets/*.css").matches("/assets/site.css"));
        assert!(!g("/assets/*.css").matches("/assets/site.js"));
        assert!(!g("/assets/*.css").matches("/assets/a/site.css"));
        assert!(g("/a*b*c").matches("/abc"));
        assert!(g("/a*b*c").matches("/axxbyyc"));
        assert!(!g("/a*b*c").matches("/axxc"));
        assert!(!g("/ab*ba").matches("/aba"));
        assert!(g("/**").matches("/"));
        assert!(g("/").matches("/"));
        assert!(!g("/").matches("/x"));
        assert!(
            g("/metrics").matches("/metrics/"),
            "one trailing slash is the same path"
        );
        assert!(!g("/metrics").matches("/metrics//"));
        assert!(g("/a/**/b/**/c").matches("/a/x/b/y/z/c"));
        assert!(g("/a/**/b/**/c").matches("/a/b/c"));
        assert!(!g("/a/**/b/**/c").matches("/a/x/c/b"));
        assert!(g("/**/x/*").matches("/x/x/x/y"));
        assert!(!g("/**/x").matches("/x/y"));
    }

    #[test]
    fn many_deep_wildcards_on_a_long_hostile_path_stay_linear() {
        let glob = g("/**/a/**/a/**/a/**/a/**/b");
        let path = "/a".repeat(20_000);
        // Exponential backtracking would never return here; this returns at once.
        assert!(!glob.matches(&path));
        assert!(glob.matches(&format!("{path}/b")));
    }

    #[test]
    fn invalid_globs_say_why() {
        for bad in [
            "api/x", "/a**", "/a/?", "/a/[x]", "/a/../b", "/a;x", "/%2e", "/a//b", "/a/",
        ] {
            assert!(Glob::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn covered_by_finds_equal_globs_and_deep_prefixes() {
        assert!(g("/a/b").covered_by(&g("/a/**")));
        assert!(g("/a/**").covered_by(&g("/a/**")));
        assert!(g("/a/*.css").covered_by(&g("/**")));
        assert!(!g("/a/b").covered_by(&g("/b/**")));
        assert!(!g("/a/**").covered_by(&g("/a/b/**")));
        assert!(g("/api/admin").covered_by(&g("/api/*")));
        assert!(g("/api/*.css").covered_by(&g("/api/*")));
        assert!(!g("/api/admin/x").covered_by(&g("/api/*")));
        assert!(!g("/api/**").covered_by(&g("/api/*")));
    }
}
