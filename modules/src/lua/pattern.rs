//! Lua 5.4's pattern matching (`string.find`, `match`, `gmatch`, `gsub`)
//! ported from `lstrlib.c`, with one difference: it counts its steps and
//! stops at the job's deadline or cancellation. The C matcher runs
//! outside the VM's instruction hook, so a pattern that backtracks
//! heavily on a long subject ignored the timeout and held a core until
//! the process was killed; this one fails the call instead.
//!
//! Semantics follow the C code line by line (bytes, the C locale's
//! character classes, `MAXCCALLS` and 32 captures); the sandbox installs
//! these four functions in place of the built-in ones.

use std::time::Instant;

use mlua::{Lua, MultiValue, Value};
use tokio_util::sync::CancellationToken;

const L_ESC: u8 = b'%';
const SPECIALS: &[u8] = b"^$*+?.([%-";
const MAXCCALLS: usize = 200;
const MAXCAPTURES: usize = 32;
const CAP_UNFINISHED: isize = -1;
const CAP_POSITION: isize = -2;
/// Steps between checks of the deadline and the cancellation.
const CHECK_EVERY: u32 = 1 << 12;

/// Why a match stopped without an answer.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The job's time is up or it was cancelled.
    Limit(String),
    /// The pattern is malformed (Lua's own messages).
    Pattern(String),
}

impl From<Stop> for mlua::Error {
    fn from(stop: Stop) -> mlua::Error {
        match stop {
            Stop::Limit(m) => super::sandbox::limit_error(m),
            Stop::Pattern(m) => mlua::Error::RuntimeError(m),
        }
    }
}

/// When matching must stop.
#[derive(Clone)]
pub(crate) struct Budget {
    pub(crate) deadline: Instant,
    pub(crate) cancel: CancellationToken,
}

impl Budget {
    fn check(&self) -> Result<(), Stop> {
        if self.cancel.is_cancelled() {
            Err(Stop::Limit("cancelled".into()))
        } else if Instant::now() >= self.deadline {
            Err(Stop::Limit(
                "time limit exceeded (in pattern matching)".into(),
            ))
        } else {
            Ok(())
        }
    }
}

struct State<'a> {
    src: &'a [u8],
    pat: &'a [u8],
    level: usize,
    capture: [(usize, isize); MAXCAPTURES],
    matchdepth: usize,
    budget: &'a Budget,
    steps: u32,
}

fn pattern_error(message: &str) -> Stop {
    Stop::Pattern(message.to_owned())
}

fn class_matches(c: u8, cl: u8) -> bool {
    let res = match cl.to_ascii_lowercase() {
        b'a' => c.is_ascii_alphabetic(),
        b'c' => c.is_ascii_control(),
        b'd' => c.is_ascii_digit(),
        b'g' => c.is_ascii_graphic(),
        b'l' => c.is_ascii_lowercase(),
        b'p' => c.is_ascii_punctuation(),
        b's' => matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'),
        b'u' => c.is_ascii_uppercase(),
        b'w' => c.is_ascii_alphanumeric(),
        b'x' => c.is_ascii_hexdigit(),
        _ => return cl == c,
    };
    if cl.is_ascii_uppercase() {
        !res
    } else {
        res
    }
}

impl<'a> State<'a> {
    fn new(src: &'a [u8], pat: &'a [u8], budget: &'a Budget) -> State<'a> {
        State {
            src,
            pat,
            level: 0,
            capture: [(0, 0); MAXCAPTURES],
            matchdepth: MAXCCALLS,
            budget,
            steps: 0,
        }
    }

    fn reprep(&mut self) {
        self.level = 0;
        self.matchdepth = MAXCCALLS;
    }

    fn tick(&mut self) -> Result<(), Stop> {
        self.steps = self.steps.wrapping_add(1);
        if self.steps.is_multiple_of(CHECK_EVERY) {
            self.budget.check()?;
        }
        Ok(())
    }

    fn pat_at(&self, p: usize) -> u8 {
        self.pat.get(p).copied().unwrap_or(0)
    }

    fn class_end(&self, mut p: usize) -> Result<usize, Stop> {
        let c = self.pat_at(p);
        p += 1;
        if c == L_ESC {
            if p >= self.pat.len() {
                return Err(pattern_error("malformed pattern (ends with '%')"));
            }
            return Ok(p + 1);
        }
        if c == b'[' {
            if self.pat_at(p) == b'^' {
                p += 1;
            }
            loop {
                if p >= self.pat.len() {
                    return Err(pattern_error("malformed pattern (missing ']')"));
                }
                let cc = self.pat[p];
                p += 1;
                if cc == L_ESC && p < self.pat.len() {
                    p += 1;
                }
                if self.pat_at(p) == b']' && p < self.pat.len() {
                    return Ok(p + 1);
                }
            }
        }
        Ok(p)
    }

    /// `p` at the `[`, `ec` at the closing `]`.
    fn bracket_matches(&self, c: u8, mut p: usize, ec: usize) -> bool {
        let mut sig = true;
        if self.pat_at(p + 1) == b'^' {
            sig = false;
            p += 1;
        }
        loop {
            p += 1;
            if p >= ec {
                break;
            }
            let pc = self.pat[p];
            if pc == L_ESC {
                p += 1;
                if class_matches(c, self.pat_at(p)) {
                    return sig;
                }
            } else if self.pat_at(p + 1) == b'-' && p + 2 < ec {
                p += 2;
                if self.pat[p - 2] <= c && c <= self.pat[p] {
                    return sig;
                }
            } else if pc == c {
                return sig;
            }
        }
        !sig
    }

    fn single_matches(&self, s: usize, p: usize, ep: usize) -> bool {
        let Some(&c) = self.src.get(s) else {
            return false;
        };
        match self.pat[p] {
            b'.' => true,
            L_ESC => class_matches(c, self.pat_at(p + 1)),
            b'[' => self.bracket_matches(c, p, ep - 1),
            pc => pc == c,
        }
    }

    fn match_balance(&self, s: usize, p: usize) -> Result<Option<usize>, Stop> {
        if p + 1 >= self.pat.len() {
            return Err(pattern_error(
                "malformed pattern (missing arguments to '%b')",
            ));
        }
        if self.src.get(s) != Some(&self.pat[p]) {
            return Ok(None);
        }
        let (b, e) = (self.pat[p], self.pat[p + 1]);
        let mut cont = 1;
        let mut s = s;
        loop {
            s += 1;
            if s >= self.src.len() {
                return Ok(None);
            }
            let c = self.src[s];
            if c == e {
                cont -= 1;
                if cont == 0 {
                    return Ok(Some(s + 1));
                }
            } else if c == b {
                cont += 1;
            }
        }
    }

    fn max_expand(&mut self, s: usize, p: usize, ep: usize) -> Result<Option<usize>, Stop> {
        let mut i = 0usize;
        while self.single_matches(s + i, p, ep) {
            self.tick()?;
            i += 1;
        }
        loop {
            self.tick()?;
            if let Some(res) = self.do_match(s + i, ep + 1)? {
                return Ok(Some(res));
            }
            if i == 0 {
                return Ok(None);
            }
            i -= 1;
        }
    }

    fn min_expand(&mut self, mut s: usize, p: usize, ep: usize) -> Result<Option<usize>, Stop> {
        loop {
            self.tick()?;
            if let Some(res) = self.do_match(s, ep + 1)? {
                return Ok(Some(res));
            }
            if self.single_matches(s, p, ep) {
                s += 1;
            } else {
                return Ok(None);
            }
        }
    }

    fn start_capture(&mut self, s: usize, p: usize, what: isize) -> Result<Option<usize>, Stop> {
        if self.level >= MAXCAPTURES {
            return Err(pattern_error("too many captures"));
        }
        self.capture[self.level] = (s, what);
        self.level += 1;
        let res = self.do_match(s, p)?;
        if res.is_none() {
            self.level -= 1;
        }
        Ok(res)
    }

    fn end_capture(&mut self, s: usize, p: usize) -> Result<Option<usize>, Stop> {
        let l = (0..self.level)
            .rev()
            .find(|&l| self.capture[l].1 == CAP_UNFINISHED)
            .ok_or_else(|| pattern_error("invalid pattern capture"))?;
        self.capture[l].1 = (s - self.capture[l].0) as isize;
        let res = self.do_match(s, p)?;
        if res.is_none() {
            self.capture[l].1 = CAP_UNFINISHED;
        }
        Ok(res)
    }

    fn match_capture(&self, s: usize, l: u8) -> Result<Option<usize>, Stop> {
        let l = l as isize - b'1' as isize;
        if l < 0 || l as usize >= self.level || self.capture[l as usize].1 == CAP_UNFINISHED {
            return Err(Stop::Pattern(format!("invalid capture index %{}", l + 1)));
        }
        let (init, len) = self.capture[l as usize];
        // A position capture has no text: as in C (where its length reads
        // as a huge size), a back-reference to it never matches.
        let Ok(len) = usize::try_from(len) else {
            return Ok(None);
        };
        if self.src.len() - s >= len && self.src[init..init + len] == self.src[s..s + len] {
            Ok(Some(s + len))
        } else {
            Ok(None)
        }
    }

    fn do_match(&mut self, s: usize, p: usize) -> Result<Option<usize>, Stop> {
        if self.matchdepth == 0 {
            return Err(pattern_error("pattern too complex"));
        }
        self.matchdepth -= 1;
        let result = self.match_from(s, p);
        self.matchdepth += 1;
        result
    }

    fn match_from(&mut self, mut s: usize, mut p: usize) -> Result<Option<usize>, Stop> {
        loop {
            self.tick()?;
            if p == self.pat.len() {
                return Ok(Some(s));
            }
            match self.pat[p] {
                b'(' => {
                    return if self.pat_at(p + 1) == b')' {
                        self.start_capture(s, p + 2, CAP_POSITION)
                    } else {
                        self.start_capture(s, p + 1, CAP_UNFINISHED)
                    };
                }
                b')' => return self.end_capture(s, p + 1),
                b'$' if p + 1 == self.pat.len() => {
                    return Ok((s == self.src.len()).then_some(s));
                }
                L_ESC if self.pat_at(p + 1) == b'b' => match self.match_balance(s, p + 2)? {
                    Some(next) => {
                        s = next;
                        p += 4;
                        continue;
                    }
                    None => return Ok(None),
                },
                L_ESC if self.pat_at(p + 1) == b'f' => {
                    p += 2;
                    if self.pat_at(p) != b'[' {
                        return Err(pattern_error("missing '[' after '%f' in pattern"));
                    }
                    let ep = self.class_end(p)?;
                    let previous = if s == 0 { 0 } else { self.src[s - 1] };
                    let current = self.src.get(s).copied().unwrap_or(0);
                    if !self.bracket_matches(previous, p, ep - 1)
                        && self.bracket_matches(current, p, ep - 1)
                    {
                        p = ep;
                        continue;
                    }
                    return Ok(None);
                }
                L_ESC if self.pat_at(p + 1).is_ascii_digit() => {
                    match self.match_capture(s, self.pat_at(p + 1))? {
                        Some(next) => {
                            s = next;
                            p += 2;
                            continue;
                        }
                        None => return Ok(None),
                    }
                }
                _ => {
                    let ep = self.class_end(p)?;
                    let quantifier = self.pat_at(ep);
                    let quantified = ep < self.pat.len();
                    if !self.single_matches(s, p, ep) {
                        if quantified && matches!(quantifier, b'*' | b'?' | b'-') {
                            p = ep + 1;
                            continue;
                        }
                        return Ok(None);
                    }
                    match quantifier {
                        b'?' if quantified => {
                            if let Some(res) = self.do_match(s + 1, ep + 1)? {
                                return Ok(Some(res));
                            }
                            p = ep + 1;
                        }
                        b'+' if quantified => return self.max_expand(s + 1, p, ep),
                        b'*' if quantified => return self.max_expand(s, p, ep),
                        b'-' if quantified => return self.min_expand(s, p, ep),
                        _ => {
                            s += 1;
                            p = ep;
                        }
                    }
                }
            }
        }
    }

    /// Capture `i` (or the whole match `s..e` when there are none).
    fn capture_value(
        &self,
        lua: &Lua,
        i: usize,
        whole: Option<(usize, usize)>,
    ) -> mlua::Result<Value> {
        if i >= self.level {
            return match (i, whole) {
                (0, Some((s, e))) => Ok(Value::String(lua.create_string(&self.src[s..e])?)),
                _ => Err(mlua::Error::RuntimeError(format!(
                    "invalid capture index %{}",
                    i + 1
                ))),
            };
        }
        let (init, len) = self.capture[i];
        match len {
            CAP_UNFINISHED => Err(mlua::Error::RuntimeError("unfinished capture".into())),
            CAP_POSITION => Ok(Value::Integer(init as i64 + 1)),
            len => Ok(Value::String(
                lua.create_string(&self.src[init..init + len as usize])?,
            )),
        }
    }

    fn captures(&self, lua: &Lua, whole: Option<(usize, usize)>) -> mlua::Result<Vec<Value>> {
        let n = if self.level == 0 && whole.is_some() {
            1
        } else {
            self.level
        };
        (0..n).map(|i| self.capture_value(lua, i, whole)).collect()
    }
}

/// Lua's `posrelatI`: a 1-based start position from a possibly negative one.
fn start_position(pos: i64, len: usize) -> usize {
    if pos > 0 {
        pos as usize
    } else if pos == 0 || pos < -(len as i64) {
        1
    } else {
        (len as i64 + pos + 1) as usize
    }
}

fn find_aux(
    lua: &Lua,
    budget: &Budget,
    args: (mlua::String, mlua::String, Option<i64>, Option<Value>),
    find: bool,
) -> mlua::Result<MultiValue> {
    let (subject, pattern, init, plain) = args;
    let (src, pat) = (subject.as_bytes(), pattern.as_bytes());
    let (src, pat): (&[u8], &[u8]) = (&src, &pat);
    let init = start_position(init.unwrap_or(1), src.len()) - 1;
    if init > src.len() {
        return Ok(MultiValue::from_vec(vec![Value::Nil]));
    }
    let plain = plain.is_some_and(|v| !matches!(v, Value::Nil | Value::Boolean(false)));
    if find && (plain || !pat.iter().any(|c| SPECIALS.contains(c))) {
        let found = if pat.is_empty() {
            Some(init)
        } else {
            src[init..]
                .windows(pat.len())
                .position(|w| w == pat)
                .map(|i| i + init)
        };
        return Ok(MultiValue::from_vec(match found {
            Some(at) => vec![
                Value::Integer(at as i64 + 1),
                Value::Integer((at + pat.len()) as i64),
            ],
            None => vec![Value::Nil],
        }));
    }
    let anchor = pat.first() == Some(&b'^');
    let pat = if anchor { &pat[1..] } else { pat };
    let mut state = State::new(src, pat, budget);
    let mut s1 = init;
    loop {
        state.reprep();
        if let Some(e) = state.do_match(s1, 0)? {
            let values = if find {
                let mut values = vec![Value::Integer(s1 as i64 + 1), Value::Integer(e as i64)];
                values.extend(state.captures(lua, None)?);
                values
            } else {
                state.captures(lua, Some((s1, e)))?
            };
            return Ok(MultiValue::from_vec(values));
        }
        s1 += 1;
        if anchor || s1 > src.len() {
            return Ok(MultiValue::from_vec(vec![Value::Nil]));
        }
    }
}

fn gsub(
    lua: &Lua,
    budget: &Budget,
    (subject, pattern, repl, max): (mlua::String, mlua::String, Value, Option<i64>),
) -> mlua::Result<(mlua::String, i64)> {
    let (src, pat) = (subject.as_bytes(), pattern.as_bytes());
    let (src, pat): (&[u8], &[u8]) = (&src, &pat);
    if !matches!(
        repl,
        Value::String(_)
            | Value::Integer(_)
            | Value::Number(_)
            | Value::Function(_)
            | Value::Table(_)
    ) {
        return Err(mlua::Error::RuntimeError(
            "bad argument #3 to 'gsub' (string/function/table expected)".into(),
        ));
    }
    let max = max.unwrap_or(src.len() as i64 + 1);
    let anchor = pat.first() == Some(&b'^');
    let pat = if anchor { &pat[1..] } else { pat };
    let mut state = State::new(src, pat, budget);
    let mut out: Vec<u8> = Vec::with_capacity(src.len());
    let (mut s, mut n, mut changed) = (0usize, 0i64, false);
    let mut last: Option<usize> = None;
    while n < max {
        state.reprep();
        match state.do_match(s, 0)? {
            Some(e) if Some(e) != last => {
                n += 1;
                changed |= add_value(lua, &state, &mut out, s, e, &repl)?;
                s = e;
                last = Some(e);
            }
            _ if s < src.len() => {
                out.push(src[s]);
                s += 1;
            }
            _ => break,
        }
        if anchor {
            break;
        }
    }
    if !changed {
        return Ok((subject.clone(), n));
    }
    out.extend_from_slice(&src[s..]);
    Ok((lua.create_string(&out)?, n))
}

fn add_value(
    lua: &Lua,
    state: &State,
    out: &mut Vec<u8>,
    s: usize,
    e: usize,
    repl: &Value,
) -> mlua::Result<bool> {
    let value = match repl {
        Value::Function(f) => {
            f.call::<Value>(MultiValue::from_vec(state.captures(lua, Some((s, e)))?))?
        }
        Value::Table(t) => t.get::<Value>(state.capture_value(lua, 0, Some((s, e)))?)?,
        text => {
            let text = lua
                .coerce_string(text.clone())?
                .map(|t| t.as_bytes().to_vec())
                .unwrap_or_default();
            let mut i = 0;
            while i < text.len() {
                let c = text[i];
                i += 1;
                if c != L_ESC {
                    out.push(c);
                    continue;
                }
                let d = text.get(i).copied().unwrap_or(0);
                i += 1;
                if d == L_ESC {
                    out.push(L_ESC);
                } else if d.is_ascii_digit() {
                    let piece = if d == b'0' {
                        Value::String(lua.create_string(&state.src[s..e])?)
                    } else {
                        state.capture_value(lua, (d - b'1') as usize, Some((s, e)))?
                    };
                    match lua.coerce_string(piece)? {
                        Some(piece) => out.extend_from_slice(&piece.as_bytes()),
                        None => {
                            return Err(mlua::Error::RuntimeError(
                                "invalid capture value in replacement string".into(),
                            ))
                        }
                    }
                } else {
                    return Err(mlua::Error::RuntimeError(
                        "invalid use of '%' in replacement string".into(),
                    ));
                }
            }
            return Ok(true);
        }
    };
    match value {
        Value::Nil | Value::Boolean(false) => {
            out.extend_from_slice(&state.src[s..e]);
            Ok(false)
        }
        Value::String(text) => {
            out.extend_from_slice(&text.as_bytes());
            Ok(true)
        }
        Value::Integer(_) | Value::Number(_) => {
            let text = lua
                .coerce_string(value)?
                .map(|t| t.as_bytes().to_vec())
                .unwrap_or_default();
            out.extend_from_slice(&text);
            Ok(true)
        }
        other => Err(mlua::Error::RuntimeError(format!(
            "invalid replacement value (a {})",
            other.type_name()
        ))),
    }
}

/// Replaces `string.find`, `match`, `gmatch` and `gsub` with the bounded
/// ones (strings' methods are the `string` table's, so `s:find()` too).
pub(crate) fn install(lua: &Lua, budget: Budget) -> mlua::Result<()> {
    let string: mlua::Table = lua.globals().get("string")?;
    let b = budget.clone();
    string.set(
        "find",
        lua.create_function(move |lua, args| find_aux(lua, &b, args, true))?,
    )?;
    let b = budget.clone();
    string.set(
        "match",
        lua.create_function(move |lua, args| find_aux(lua, &b, args, false))?,
    )?;
    let b = budget.clone();
    string.set(
        "gsub",
        lua.create_function(move |lua, args| gsub(lua, &b, args))?,
    )?;
    let b = budget;
    string.set(
        "gmatch",
        lua.create_function(
            move |lua, (subject, pattern, init): (mlua::String, mlua::String, Option<i64>)| {
                let len = subject.as_bytes().len();
                let mut position = start_position(init.unwrap_or(1), len) - 1;
                if position > len {
                    position = len + 1;
                }
                let mut last: Option<usize> = None;
                let budget = b.clone();
                lua.create_function_mut(move |lua, ()| {
                    let (src, pat) = (subject.as_bytes(), pattern.as_bytes());
                    let (src, pat): (&[u8], &[u8]) = (&src, &pat);
                    let mut state = State::new(src, pat, &budget);
                    while position <= src.len() {
                        state.reprep();
                        if let Some(e) = state.do_match(position, 0)? {
                            if Some(e) != last {
                                let values = state.captures(lua, Some((position, e)))?;
                                position = e;
                                last = Some(e);
                                return Ok(MultiValue::from_vec(values));
                            }
                        }
                        position += 1;
                    }
                    Ok(MultiValue::from_vec(vec![Value::Nil]))
                })
            },
        )?,
    )?;
    Ok(())
}
