//! Redis glob patterns (KEYS, SCAN MATCH, CONFIG GET): `*`, `?`, `[abc]`, `[^a-z]`, `\x`.

/// Whether `text` matches `pattern`, as Redis's `stringmatchlen` decides.
pub fn matches(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative matching with backtracking to the last star: linear in practice, and no
    // recursion depth to exhaust on hostile patterns.
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(pattern, p, text[t]) {
                        if matched {
                            p = next;
                            t += 1;
                            continue;
                        }
                    } else if text[t] == b'[' {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == text[t] {
                        p += 2;
                        t += 1;
                        continue;
                    }
                }
                c => {
                    if c == text[t] {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `pattern[start] == '['`. Returns whether it matched
/// and the index after the class, or `None` for an unterminated class.
fn class(pattern: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    loop {
        let &ch = pattern.get(i)?;
        match ch {
            b']' => return Some((matched != negate, i + 1)),
            b'\\' if i + 1 < pattern.len() => {
                matched |= pattern[i + 1] == c;
                i += 2;
            }
            _ if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|&e| e != b']') => {
                let (lo, hi) = (ch.min(pattern[i + 2]), ch.max(pattern[i + 2]));
                matched |= (lo..=hi).contains(&c);
                i += 3;
            }
            _ => {
                matched |= ch == c;
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn redis_patterns() {
        let yes = |p: &str, t: &str| assert!(matches(p.as_bytes(), t.as_bytes()), "{p} should match {t}");
        let no = |p: &str, t: &str| assert!(!matches(p.as_bytes(), t.as_bytes()), "{p} should not match {t}");
        yes("*", "");
        yes("*", "anything");
        yes("h?llo", "hello");
        no("h?llo", "hllo");
        yes("h*llo", "heeeello");
        yes("h[ae]llo", "hallo");
        no("h[ae]llo", "hillo");
        yes("h[^e]llo", "hallo");
        no("h[^e]llo", "hello");
        yes("h[a-b]llo", "hbllo");
        yes("key:*:x", "key:123:x");
        no("key:*:x", "key:123:y");
        yes("a\\*b", "a*b");
        no("a\\*b", "axb");
        yes("*a*a*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaab");
        no("*a*a*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaa");
        yes("save", "save");
        no("[", "x");
    }
}
