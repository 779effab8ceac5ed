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

/// What one kind of line is matched with.
#[derive(Debug, Clone)]
pub enum Pattern {
    /// A single plain word or phrase: a SIMD substring search, no regex machinery.
    Literal(Box<memchr::memmem::Finder<'static>>),
    /// Anything else: one regex from all the patterns; `^` and `$` match at line ends.
    Regex(Regex),
}

impl Pattern {
    fn find_at(&self, haystack: &[u8], from: usize) -> Option<usize> {
        match self {
            Pattern::Literal(f) => f.find(&haystack[from..]).map(|i| from + i),
            Pattern::Regex(re) => re.find_at(haystack, from).map(|m| m.start()),
        }
    }
}

/// Builds the matcher for the patterns of one flag.
///
/// # Errors
/// The pattern that does not compile, with regex's explanation.
pub fn combine(patterns: &[String], flag: &str) -> anyhow::Result<Option<Pattern>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    for p in patterns {
        Regex::new(p)
            .map_err(|e| anyhow::anyhow!("{flag} {p:?} is not a valid regular expression:\n{e}"))?;
    }
    if let [only] = patterns {
        if !only.is_empty() && regex::escape(only) == *only {
            return Ok(Some(Pattern::Literal(Box::new(
                memchr::memmem::Finder::new(only.as_bytes()).into_owned(),
            ))));
        }
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
    Ok(Some(Pattern::Regex(re)))
}

/// Splits a byte stream into lines across chunk boundaries and reports the
/// lines that match. Matching runs over whole chunks (the regex engine's
/// literal search), not line by line, so non-matching output costs little.
#[derive(Debug)]
pub struct LineMatcher {
    job: Option<Pattern>,
    error: Option<Pattern>,
    carry: Vec<u8>,
    carry_overflowed: bool,
}

impl LineMatcher {
    /// A matcher for these patterns (either may be absent).
    pub fn new(job: Option<Pattern>, error: Option<Pattern>) -> Self {
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
            let Some(nl) = memchr::memchr(b'\n', chunk) else {
                self.push_carry(chunk);
                return;
            };
            self.push_carry(&chunk[..nl]);
            let line = std::mem::take(&mut self.carry);
            self.carry_overflowed = false;
            self.scan(&line, on_match);
            chunk = &chunk[nl + 1..];
        }
        match memchr::memrchr(b'\n', chunk) {
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

    /// `region` is whole lines joined by `\n` (no trailing newline). Matches
    /// are reported in line order (a job before an error on the same line),
    /// so the error streak behind the circuit breaker follows the output.
    /// Lines are ordered by where they end; only error lines, whose text is
    /// kept, need their start (job lines get an empty slice).
    fn scan(&self, region: &[u8], on_match: &mut impl FnMut(LineKind, &[u8])) {
        let mut job = next_line_end(self.job.as_ref(), region, 0);
        let mut error = next_line_end(self.error.as_ref(), region, 0);
        loop {
            let next = match (job, error) {
                (Some(j), Some(e)) if e < j => (LineKind::Error, e),
                (Some(j), _) => (LineKind::Job, j),
                (None, Some(e)) => (LineKind::Error, e),
                (None, None) => return,
            };
            match next {
                (LineKind::Job, end) => {
                    on_match(LineKind::Job, &[]);
                    job = next_line_end(self.job.as_ref(), region, end + 1);
                }
                (LineKind::Error, end) => {
                    let start = memchr::memrchr(b'\n', &region[..end]).map_or(0, |i| i + 1);
                    on_match(LineKind::Error, &region[start..end]);
                    error = next_line_end(self.error.as_ref(), region, end + 1);
                }
            }
        }
    }
}

/// Where the first line at or after `from` that `pattern` matches ends.
fn next_line_end(pattern: Option<&Pattern>, region: &[u8], from: usize) -> Option<usize> {
    if from > region.len() {
        return None;
    }
    let at = pattern?.find_at(region, from)?;
    Some(memchr::memchr(b'\n', &region[at..]).map_or(region.len(), |i| at + i))
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
    fn matches_come_in_line_order() {
        let job = combine(&["ok".to_owned()], "j").ok().flatten();
        let error = combine(&["ERR".to_owned()], "e").ok().flatten();
        let mut m = LineMatcher::new(job, error);
        let mut seen = String::new();
        m.feed(
            b"ERR 1\nok\nERR 2\nERR 3\nok ERR\nok\n",
            &mut |k: LineKind, _: &[u8]| seen.push(if k == LineKind::Job { 'j' } else { 'e' }),
        );
        assert_eq!(seen, "ejeejej");
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
