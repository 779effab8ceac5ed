//! Counts lines of the child's output that match the job and error patterns,
//! without changing a byte of what passes through.

use regex::bytes::{Regex, RegexBuilder};

/// Longest line matched; the rest of a longer line passes through unmatched.
const MAX_LINE: usize = 64 * 1024;

/// What a matched line means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// Matched `--job-pattern`.
    Job,
    /// Matched `--error-pattern`.
    Error,
}

/// Builds one regex from several patterns; `^` and `$` match at line ends.
///
/// # Errors
/// The pattern that does not compile, with regex's explanation.
pub fn combine(patterns: &[String], flag: &str) -> anyhow::Result<Option<Regex>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    for p in patterns {
        Regex::new(p)
            .map_err(|e| anyhow::anyhow!("{flag} {p:?} is not a valid regular expression:\n{e}"))?;
    }
    let joined = patterns
        .iter()
        .map(|p| format!("(?:{p})"))
        .collect::<Vec<_>>()
        .join("|");
    let re = RegexBuilder::new(&joined)
        .multi_line(true)
        .build()
        .map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
    Ok(Some(re))
}

/// Splits a byte stream into lines across chunk boundaries and reports the
/// lines that match. Matching runs over whole chunks (the regex engine's
/// literal search), not line by line, so non-matching output costs little.
#[derive(Debug)]
pub struct LineMatcher {
    job: Option<Regex>,
    error: Option<Regex>,
    carry: Vec<u8>,
    carry_overflowed: bool,
}

impl LineMatcher {
    /// A matcher for these patterns (either may be absent).
    pub fn new(job: Option<Regex>, error: Option<Regex>) -> Self {
        LineMatcher {
            job,
            error,
            carry: Vec::new(),
            carry_overflowed: false,
        }
    }

    /// Whether there is anything to match.
    pub fn is_active(&self) -> bool {
        self.job.is_some() || self.error.is_some()
    }

    /// Feeds the next chunk of output; `on_match` gets each matched line (without its newline).
    pub fn feed(&mut self, mut chunk: &[u8], on_match: &mut impl FnMut(LineKind, &[u8])) {
        if !self.is_active() {
            return;
        }
        if !self.carry.is_empty() || self.carry_overflowed {
            let Some(nl) = memchr(b'\n', chunk) else {
                self.push_carry(chunk);
                return;
            };
            self.push_carry(&chunk[..nl]);
            let line = std::mem::take(&mut self.carry);
            self.carry_overflowed = false;
            self.scan(&line, on_match);
            chunk = &chunk[nl + 1..];
        }
        match chunk.iter().rposition(|&b| b == b'\n') {
            Some(last) => {
                self.scan(&chunk[..last], on_match);
                self.push_carry(&chunk[last + 1..]);
            }
            None => self.push_carry(chunk),
        }
    }

    /// The output ended: a last line without a newline still counts.
    pub fn finish(&mut self, on_match: &mut impl FnMut(LineKind, &[u8])) {
        if !self.carry.is_empty() {
            let line = std::mem::take(&mut self.carry);
            self.scan(&line, on_match);
        }
        self.carry_overflowed = false;
    }

    fn push_carry(&mut self, bytes: &[u8]) {
        let room = MAX_LINE.saturating_sub(self.carry.len());
        if bytes.len() > room {
            self.carry_overflowed = true;
        }
        self.carry
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// `region` is whole lines joined by `\n` (no trailing newline).
    fn scan(&self, region: &[u8], on_match: &mut impl FnMut(LineKind, &[u8])) {
        for (re, kind) in [(&self.job, LineKind::Job), (&self.error, LineKind::Error)] {
            let Some(re) = re else { continue };
            let mut from = 0;
            while from <= region.len() {
                let Some(m) = re.find_at(region, from) else {
                    break;
                };
                let start = region[..m.start()]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1);
                let end =
                    memchr(b'\n', &region[m.start()..]).map_or(region.len(), |i| m.start() + i);
                on_match(kind, &region[start..end]);
                from = end + 1;
            }
        }
    }
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(job: &[&str], error: &[&str], chunks: &[&[u8]]) -> (usize, Vec<String>) {
        let job = combine(
            &job.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
            "--job-pattern",
        )
        .ok()
        .flatten();
        let error = combine(
            &error.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
            "--error-pattern",
        )
        .ok()
        .flatten();
        let mut m = LineMatcher::new(job, error);
        let (mut jobs, mut errors) = (0, Vec::new());
        let mut on = |k: LineKind, line: &[u8]| match k {
            LineKind::Job => jobs += 1,
            LineKind::Error => errors.push(String::from_utf8_lossy(line).into_owned()),
        };
        for c in chunks {
            m.feed(c, &mut on);
        }
        m.finish(&mut on);
        (jobs, errors)
    }

    #[test]
    fn one_count_per_line_even_with_several_matches() {
        assert_eq!(count(&["done"], &[], &[b"done done\nnot\ndone\n"]).0, 2);
    }

    #[test]
    fn lines_split_across_chunks_and_the_last_line_without_newline() {
        let (jobs, errors) = count(
            &["^job ok$"],
            &["ERROR"],
            &[b"jo", b"b ok\nERR", b"OR: boom\njob", b" ok"],
        );
        assert_eq!(jobs, 2);
        assert_eq!(errors, vec!["ERROR: boom".to_owned()]);
    }

    #[test]
    fn anchors_work_per_line() {
        assert_eq!(count(&["^x$"], &[], &[b"x\nxx\n x\nx"]).0, 2);
    }

    #[test]
    fn invalid_utf8_is_matched_as_bytes() {
        assert_eq!(count(&["ok"], &[], &[b"\xff\xfe ok \xc3\x28\n\xffok"]).0, 2);
    }

    #[test]
    fn bad_pattern_names_the_flag() {
        let e = combine(&["(".to_owned()], "--job-pattern")
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert!(e.is_err_and(|e| e.contains("--job-pattern") && e.contains("\"(\"")));
    }

    #[test]
    fn overlong_lines_are_bounded_and_still_counted_once() {
        let mut long = vec![b'a'; MAX_LINE * 3];
        long.extend_from_slice(b"\ndone\n");
        assert_eq!(count(&["^a"], &[], &[&long[..1000], &long[1000..]]).0, 1);
        assert_eq!(count(&["done"], &[], &[&long[..1000], &long[1000..]]).0, 1);
    }
}
