//! Target expressions: which minions a job is for.
//!
//! Each minion matches a job's target against its own id and grains; the
//! master evaluates the same expression against what it knows to compute
//! the set of minions it expects to return.
//!
//! [`Target::parse`] does everything that can fail once (glob and regex
//! compilation, compound syntax, size and nesting limits); the resulting
//! [`Target`] then matches any number of minions without allocating much,
//! failing or panicking. The syntax follows SaltStack's: `fnmatch` globs,
//! regexes (here anchored at both ends), `key:pattern` grains with nested
//! keys joined by `:`, and compound expressions of `G@`, `P@`, `E@`, `L@`
//! and bare globs joined by `not` > `and` > `or` and parentheses.

use serde::{Deserialize, Serialize};

/// How a target expression is read (`tgt_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetType {
    /// Shell glob on the minion id: `web*`, `db[12]`, `app-?`.
    #[default]
    Glob,
    /// Comma-separated ids: `web01,web02`.
    List,
    /// Regular expression on the minion id (anchored at both ends).
    Pcre,
    /// `key:glob` on a grain, nested keys joined by `:`: `os:Linux`.
    Grain,
    /// Salt compound: `G@os:Linux and web* or L@db1,db2`, with `not` and parentheses.
    Compound,
}

impl std::str::FromStr for TargetType {
    type Err = TargetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "glob" => TargetType::Glob,
            "list" => TargetType::List,
            "pcre" => TargetType::Pcre,
            "grain" => TargetType::Grain,
            "compound" => TargetType::Compound,
            other => {
                return Err(TargetError::new(format!(
                    "unknown tgt_type {other:?}: expected glob, list, pcre, grain or compound"
                )))
            }
        })
    }
}

impl std::fmt::Display for TargetType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TargetType::Glob => "glob",
            TargetType::List => "list",
            TargetType::Pcre => "pcre",
            TargetType::Grain => "grain",
            TargetType::Compound => "compound",
        })
    }
}

/// A target expression that cannot be parsed, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TargetError(String);

impl TargetError {
    /// An error with this explanation.
    pub fn new(message: impl Into<String>) -> Self {
        TargetError(message.into())
    }
}

/// Longest expression accepted, in bytes, for every type but `list`.
const MAX_EXPR_LEN: usize = 4096;
/// Longest `list` expression accepted, in bytes (thousands of ids).
const MAX_LIST_LEN: usize = 1 << 20;
/// Deepest nesting of parentheses accepted in a compound expression.
const MAX_DEPTH: usize = 32;
/// Most `:`-separated key segments a grain expression may walk into.
const MAX_KEY_DEPTH: usize = 16;
/// Compiled-size ceiling for every regex, so a hostile one cannot eat memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// At most 64 characters of user input, for error messages.
fn shown(value: &str) -> String {
    let mut out: String = value.chars().take(64).collect();
    if out.len() < value.len() {
        out.push('…');
    }
    out
}

/// A parsed target expression, ready to match many minions quickly.
///
/// Parsing does all the work that can fail (globs, regexes, compound
/// syntax), so [`Target::matches`] is cheap, never fails and never panics;
/// the master can evaluate one target against its whole fleet.
#[derive(Clone, Debug)]
pub struct Target {
    node: Node,
}

impl Target {
    /// Parses `expr` as a `tgt_type` expression, rejecting anything
    /// malformed, unsupported or over the size limits with the reason.
    pub fn parse(tgt_type: TargetType, expr: &str) -> Result<Target, TargetError> {
        if expr.trim().is_empty() {
            return Err(TargetError::new(format!("empty {tgt_type} target")));
        }
        let limit = match tgt_type {
            TargetType::List => MAX_LIST_LEN,
            _ => MAX_EXPR_LEN,
        };
        if expr.len() > limit {
            return Err(TargetError::new(format!(
                "{tgt_type} target is {} bytes long; the limit is {limit}",
                expr.len()
            )));
        }
        let node = match tgt_type {
            // Ids never contain whitespace, so surrounding blanks are noise.
            TargetType::Glob => Node::IdGlob(Glob::new(expr.trim())),
            TargetType::List => Node::List(IdList::parse(expr)?),
            TargetType::Pcre => Node::IdRegex(anchored_regex("pcre target", expr)?),
            TargetType::Grain => Node::Grain(GrainMatch::parse(expr, false)?),
            TargetType::Compound => parse_compound(expr)?,
        };
        Ok(Target { node })
    }

    /// Does the minion with this id and these grains (a JSON object) match?
    pub fn matches(&self, id: &str, grains: &serde_json::Value) -> bool {
        self.node.matches(id, grains)
    }

    /// For a `list` target (or a compound that is a single L@): the ids named; None otherwise.
    ///
    /// Lets the master know exactly which minions to expect without
    /// consulting its grain cache. Ids are deduplicated, in the order given.
    pub fn listed_ids(&self) -> Option<Vec<String>> {
        match &self.node {
            Node::List(list) => Some(list.ids.clone()),
            _ => None,
        }
    }
}

/// One node of a parsed expression.
#[derive(Clone, Debug)]
enum Node {
    /// Glob on the minion id (`glob`, bare compound word).
    IdGlob(Glob),
    /// Anchored regex on the minion id (`pcre`, `E@`).
    IdRegex(regex::Regex),
    /// Exact ids (`list`, `L@`).
    List(IdList),
    /// Grain glob or regex (`grain`, `G@`, `P@`).
    Grain(GrainMatch),
    /// Every child matches.
    And(Vec<Node>),
    /// Some child matches.
    Or(Vec<Node>),
    /// The child does not match.
    Not(Box<Node>),
}

impl Node {
    fn matches(&self, id: &str, grains: &serde_json::Value) -> bool {
        match self {
            Node::IdGlob(glob) => glob.matches(id),
            Node::IdRegex(re) => re.is_match(id),
            Node::List(list) => list.set.contains(id),
            Node::Grain(grain) => grain.matches(grains),
            Node::And(children) => children.iter().all(|c| c.matches(id, grains)),
            Node::Or(children) => children.iter().any(|c| c.matches(id, grains)),
            Node::Not(child) => !child.matches(id, grains),
        }
    }
}

// ---------------------------------------------------------------- glob

/// One element of a compiled glob.
#[derive(Clone, Debug, PartialEq, Eq)]
enum GlobToken {
    /// Exactly this character.
    Literal(char),
    /// `?`: any one character.
    Any,
    /// `*`: any run of characters, possibly empty.
    Star,
    /// `[...]`: one character in (or, negated, not in) the inclusive ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl GlobToken {
    fn matches_char(&self, c: char) -> bool {
        match self {
            GlobToken::Literal(l) => *l == c,
            GlobToken::Any => true,
            GlobToken::Star => false,
            GlobToken::Class { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        }
    }
}

/// Does `text` match the shell glob `pattern` (read as minion-id globs
/// are)? For names other than minion ids: tags a trigger takes.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    Glob::new(pattern).matches(text)
}

/// A shell glob as Python's `fnmatch` reads it (which is what Salt uses):
/// `*`, `?`, `[abc]`, `[a-z]`, `[!x]`/`[^x]`, `]` first in a class is a
/// member, an unclosed `[` is a literal, no backslash escapes. Case-sensitive.
#[derive(Clone, Debug)]
struct Glob {
    tokens: Vec<GlobToken>,
}

impl Glob {
    fn new(pattern: &str) -> Glob {
        let chars: Vec<char> = pattern.chars().collect();
        // A class can only close on a `]`; knowing where the last one is
        // keeps a pattern full of unclosed `[` linear to compile.
        let last_close = chars.iter().rposition(|&c| c == ']');
        let mut tokens = Vec::with_capacity(chars.len());
        let mut i = 0;
        while let Some(&c) = chars.get(i) {
            match c {
                '*' => {
                    if tokens.last() != Some(&GlobToken::Star) {
                        tokens.push(GlobToken::Star);
                    }
                    i += 1;
                }
                '?' => {
                    tokens.push(GlobToken::Any);
                    i += 1;
                }
                '[' => match last_close
                    .filter(|&close| close > i + 1)
                    .and_then(|_| parse_class(&chars, i + 1))
                {
                    Some((class, next)) => {
                        tokens.push(class);
                        i = next;
                    }
                    None => {
                        tokens.push(GlobToken::Literal('['));
                        i += 1;
                    }
                },
                _ => {
                    tokens.push(GlobToken::Literal(c));
                    i += 1;
                }
            }
        }
        Glob { tokens }
    }

    /// Is this glob exactly `*` (matches anything, including a grain dict)?
    fn is_star(&self) -> bool {
        self.tokens == [GlobToken::Star]
    }

    /// Classic single-backtrack-point matcher: only the latest `*` ever
    /// needs to retry, so this is O(pattern × text), never exponential.
    fn matches(&self, text: &str) -> bool {
        let tokens = &self.tokens;
        let (mut p, mut t) = (0usize, 0usize);
        // (token after the latest `*`, text position that `*` resumes from)
        let mut resume: Option<(usize, usize)> = None;
        loop {
            match tokens.get(p) {
                Some(GlobToken::Star) => {
                    p += 1;
                    resume = Some((p, t));
                    continue;
                }
                Some(token) => {
                    if let Some(c) = text.get(t..).and_then(|rest| rest.chars().next()) {
                        if token.matches_char(c) {
                            p += 1;
                            t += c.len_utf8();
                            continue;
                        }
                    }
                }
                None => {
                    if t == text.len() {
                        return true;
                    }
                }
            }
            // Mismatch: let the latest `*` swallow one more character.
            let Some((star_p, star_t)) = resume else {
                return false;
            };
            let Some(c) = text.get(star_t..).and_then(|rest| rest.chars().next()) else {
                return false;
            };
            let next_t = star_t + c.len_utf8();
            resume = Some((star_p, next_t));
            p = star_p;
            t = next_t;
        }
    }
}

/// Parses a class whose body starts at `start` (just after `[`); returns
/// the token and the index after `]`, or None if it never closes.
fn parse_class(chars: &[char], start: usize) -> Option<(GlobToken, usize)> {
    let mut i = start;
    let negated = matches!(chars.get(i), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let c = *chars.get(i)?;
        if c == ']' && !first {
            return Some((GlobToken::Class { negated, ranges }, i + 1));
        }
        first = false;
        if chars.get(i + 1) == Some(&'-') {
            if let Some(&hi) = chars.get(i + 2) {
                if hi != ']' {
                    // A reversed range (`z-a`) holds nothing, as in fnmatch.
                    ranges.push((c, hi));
                    i += 3;
                    continue;
                }
            }
        }
        ranges.push((c, c));
        i += 1;
    }
}

// ---------------------------------------------------------------- list

/// Exact minion ids, in the order given and as a set for lookups.
#[derive(Clone, Debug)]
struct IdList {
    ids: Vec<String>,
    set: std::collections::HashSet<String>,
}

impl IdList {
    /// Comma-separated ids; blanks around items trimmed, empty items
    /// skipped, every id checked like a real minion id (so a list can
    /// never carry a path or a wildcard to whoever consumes `listed_ids`).
    fn parse(text: &str) -> Result<IdList, TargetError> {
        let mut ids = Vec::new();
        let mut set = std::collections::HashSet::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            crate::ident::validate_id(item)
                .map_err(|e| TargetError::new(format!("list target: {e}")))?;
            if set.insert(item.to_owned()) {
                ids.push(item.to_owned());
            }
        }
        if ids.is_empty() {
            return Err(TargetError::new(format!(
                "list target `{}` names no ids",
                shown(text)
            )));
        }
        Ok(IdList { ids, set })
    }
}

// ---------------------------------------------------------------- regex

/// Compiles `expr` anchored at both ends, within the size limit.
///
/// The expression is first compiled alone: that rejects an expression
/// such as `a)|(b` that would otherwise escape the anchoring group.
fn anchored_regex(what: &str, expr: &str) -> Result<regex::Regex, TargetError> {
    let build = |pattern: &str| {
        regex::RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_SIZE_LIMIT)
            .build()
    };
    let fail = |e: regex::Error| TargetError::new(format!("bad {what} `{}`: {e}", shown(expr)));
    build(expr).map_err(fail)?;
    build(&format!("^(?:{expr})$")).map_err(fail)
}

// ---------------------------------------------------------------- grain

/// How a grain value is compared once the key path is found.
#[derive(Clone, Debug)]
enum ValuePattern {
    Glob(Glob),
    Regex(regex::Regex),
}

impl ValuePattern {
    fn matches_str(&self, text: &str) -> bool {
        match self {
            ValuePattern::Glob(glob) => glob.matches(text),
            ValuePattern::Regex(re) => re.is_match(text),
        }
    }

    /// Strings by pattern, numbers and bools by their string form (bools
    /// in JSON or Python spelling), lists if any element does, a dict only
    /// for the glob `*` (Salt's "the grain exists"), null never.
    fn matches_value(&self, value: &serde_json::Value) -> bool {
        match value {
            serde_json::Value::Array(items) => items.iter().any(|item| self.matches_scalar(item)),
            other => self.matches_scalar(other),
        }
    }

    fn matches_scalar(&self, value: &serde_json::Value) -> bool {
        use serde_json::Value;
        match value {
            Value::String(s) => self.matches_str(s),
            Value::Number(n) => self.matches_str(&n.to_string()),
            Value::Bool(true) => self.matches_str("true") || self.matches_str("True"),
            Value::Bool(false) => self.matches_str("false") || self.matches_str("False"),
            Value::Object(_) => matches!(self, ValuePattern::Glob(g) if g.is_star()),
            Value::Null | Value::Array(_) => false,
        }
    }
}

/// `key:pattern` with nested keys joined by `:`.
///
/// As in Salt, every split point is tried: the first `k` segments as the
/// key path and the rest (colons and all, so `ipv6:fe80::*` works) as the
/// pattern. `patterns[k - 1]` is the pattern used when the key path is
/// `keys[..k]`; it is None for a P@ split whose remainder is no regex.
#[derive(Clone, Debug)]
struct GrainMatch {
    keys: Vec<String>,
    patterns: Vec<Option<ValuePattern>>,
}

impl GrainMatch {
    fn parse(expr: &str, regex: bool) -> Result<GrainMatch, TargetError> {
        let kind = if regex { "grain regex (P@)" } else { "grain" };
        let colons: Vec<usize> = expr
            .match_indices(':')
            .map(|(at, _)| at)
            .take(MAX_KEY_DEPTH)
            .collect();
        let Some(&first_colon) = colons.first() else {
            return Err(TargetError::new(format!(
                "{kind} target `{}` needs the form key:pattern",
                shown(expr)
            )));
        };
        if first_colon == 0 {
            return Err(TargetError::new(format!(
                "{kind} target `{}` has an empty key before `:`",
                shown(expr)
            )));
        }
        let mut keys = Vec::with_capacity(colons.len());
        let mut patterns = Vec::with_capacity(colons.len());
        let mut first_error = None;
        let mut key_start = 0;
        for &colon in &colons {
            let key = expr.get(key_start..colon).unwrap_or_default();
            let rest = expr.get(colon + 1..).unwrap_or_default();
            keys.push(key.to_owned());
            patterns.push(if regex {
                match anchored_regex("grain regex (P@)", rest) {
                    Ok(re) => Some(ValuePattern::Regex(re)),
                    Err(e) => {
                        first_error.get_or_insert(e);
                        None
                    }
                }
            } else {
                Some(ValuePattern::Glob(Glob::new(rest)))
            });
            key_start = colon + 1;
        }
        if patterns.iter().all(Option::is_none) {
            return Err(first_error.unwrap_or_else(|| {
                TargetError::new(format!("bad grain regex `{}`", shown(expr)))
            }));
        }
        Ok(GrainMatch { keys, patterns })
    }

    /// Walks the grains one key segment at a time (into dicts by key, into
    /// lists by numeric index or into their dict elements by key); at each
    /// depth reached, the rest of the expression is tried as the pattern.
    /// Each JSON node is visited at most once, and nothing recurses.
    fn matches(&self, grains: &serde_json::Value) -> bool {
        use serde_json::Value;
        let mut pending: Vec<(&Value, usize)> = vec![(grains, 0)];
        while let Some((value, depth)) = pending.pop() {
            if let Some(Some(pattern)) = depth.checked_sub(1).and_then(|d| self.patterns.get(d)) {
                if pattern.matches_value(value) {
                    return true;
                }
            }
            let Some(key) = self.keys.get(depth) else {
                continue;
            };
            match value {
                Value::Object(map) => {
                    if let Some(child) = map.get(key) {
                        pending.push((child, depth + 1));
                    }
                }
                Value::Array(items) => {
                    if let Ok(index) = key.parse::<usize>() {
                        if let Some(child) = items.get(index) {
                            pending.push((child, depth + 1));
                        }
                    } else {
                        for item in items {
                            if let Some(child) = item.as_object().and_then(|m| m.get(key)) {
                                pending.push((child, depth + 1));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        false
    }
}

// ---------------------------------------------------------------- compound

/// One lexical token of a compound expression.
enum Token {
    And,
    Or,
    Not,
    Open,
    Close,
    /// A compiled matcher and the word it came from (for messages).
    Leaf(Node, String),
}

impl Token {
    fn describe(&self) -> &str {
        match self {
            Token::And => "and",
            Token::Or => "or",
            Token::Not => "not",
            Token::Open => "(",
            Token::Close => ")",
            Token::Leaf(_, word) => word,
        }
    }
}

/// Splits on whitespace, peels `(` off the front of words, and compiles
/// each matcher.
///
/// In a bare word or operator every `(` and `)` is grouping (ids cannot
/// hold parentheses), so `(web*)(db*)` and `not(web*)` split cleanly. In an
/// `X@` matcher a trailing `)` only closes a group while the word holds
/// more `)` than `(`, so `E@(web|db)\d+` and `(E@(web|db)\d+)` both read
/// right.
fn tokenize(expr: &str) -> Result<Vec<Token>, TargetError> {
    let mut tokens = Vec::new();
    for word in expr.split_whitespace() {
        let mut rest = word;
        loop {
            if let Some(after) = rest.strip_prefix('(') {
                tokens.push(Token::Open);
                rest = after;
                continue;
            }
            if has_matcher_prefix(rest) {
                let opens = rest.matches('(').count();
                let mut closes = rest.matches(')').count();
                let mut trailing = 0;
                while closes > opens {
                    let Some(before) = rest.strip_suffix(')') else {
                        break;
                    };
                    rest = before;
                    closes -= 1;
                    trailing += 1;
                }
                tokens.push(Token::Leaf(leaf(rest)?, shown(rest)));
                tokens.extend(std::iter::repeat_with(|| Token::Close).take(trailing));
                break;
            }
            let Some(at) = rest.find(['(', ')']) else {
                push_word(&mut tokens, rest)?;
                break;
            };
            push_word(&mut tokens, rest.get(..at).unwrap_or_default())?;
            if rest.get(at..).is_some_and(|r| r.starts_with(')')) {
                tokens.push(Token::Close);
                rest = rest.get(at + 1..).unwrap_or_default();
            } else {
                // Leave the `(` for the top of the loop to push.
                rest = rest.get(at..).unwrap_or_default();
            }
        }
    }
    Ok(tokens)
}

/// Is this word an `X@pattern` matcher (upper-case letter, then `@`)?
fn has_matcher_prefix(word: &str) -> bool {
    let mut chars = word.chars();
    matches!((chars.next(), chars.next()), (Some(p), Some('@')) if p.is_ascii_uppercase())
}

/// Pushes an operator or a matcher for a word free of parentheses.
fn push_word(tokens: &mut Vec<Token>, word: &str) -> Result<(), TargetError> {
    match word {
        "" => {}
        "and" => tokens.push(Token::And),
        "or" => tokens.push(Token::Or),
        "not" => tokens.push(Token::Not),
        word => tokens.push(Token::Leaf(leaf(word)?, shown(word))),
    }
    Ok(())
}

/// Compiles one compound word: `X@pattern` or a bare glob on the id.
fn leaf(word: &str) -> Result<Node, TargetError> {
    let mut chars = word.chars();
    if let (Some(prefix), Some('@')) = (chars.next(), chars.next()) {
        if prefix.is_ascii_uppercase() {
            let body = chars.as_str();
            let unsupported = |what: &str| {
                Err(TargetError::new(format!(
                    "{prefix}@ ({what}) targets are not supported in `{}`",
                    shown(word)
                )))
            };
            if body.is_empty() && matches!(prefix, 'G' | 'P' | 'E' | 'L') {
                return Err(TargetError::new(format!(
                    "`{prefix}@` needs a pattern after the `@`"
                )));
            }
            return match prefix {
                'G' => Ok(Node::Grain(GrainMatch::parse(body, false)?)),
                'P' => Ok(Node::Grain(GrainMatch::parse(body, true)?)),
                'E' => Ok(Node::IdRegex(anchored_regex("E@ regex", body)?)),
                'L' => Ok(Node::List(IdList::parse(body)?)),
                'I' => unsupported("pillar"),
                'J' => unsupported("pillar regex"),
                'S' => unsupported("subnet/IP address"),
                'R' => unsupported("range cluster"),
                'N' => unsupported("nodegroup"),
                _ => Err(TargetError::new(format!(
                    "unknown matcher `{prefix}@` in `{}`: expected G@, P@, E@ or L@",
                    shown(word)
                ))),
            };
        }
    }
    if word.contains('@') {
        return Err(TargetError::new(format!(
            "`{}` is not a matcher: write an upper-case letter and `@` \
             (G@, P@, E@, L@) or a glob on the minion id",
            shown(word)
        )));
    }
    Ok(Node::IdGlob(Glob::new(word)))
}

/// Parses a compound expression: `or` of `and`s of (`not`)* primaries.
fn parse_compound(expr: &str) -> Result<Node, TargetError> {
    let mut parser = Parser {
        tokens: tokenize(expr)?.into_iter().peekable(),
        prev: None,
    };
    let node = parser.parse_or(0)?;
    match parser.tokens.next() {
        None => Ok(node),
        Some(Token::Close) => Err(TargetError::new("unmatched `)` in compound target")),
        Some(token) => Err(parser.missing_operator(&token)),
    }
}

/// Recursive-descent parser; recursion only happens through `(`, which is
/// capped at [`MAX_DEPTH`], so no input can overflow the stack.
struct Parser {
    tokens: std::iter::Peekable<std::vec::IntoIter<Token>>,
    /// What the last consumed token was, for error messages.
    prev: Option<String>,
}

impl Parser {
    fn bump(&mut self) -> Option<Token> {
        let token = self.tokens.next();
        if let Some(t) = &token {
            self.prev = Some(t.describe().to_owned());
        }
        token
    }

    fn missing_operator(&self, next: &Token) -> TargetError {
        TargetError::new(format!(
            "missing `and`/`or` between `{}` and `{}` in compound target",
            self.prev.as_deref().unwrap_or_default(),
            next.describe()
        ))
    }

    fn parse_or(&mut self, depth: usize) -> Result<Node, TargetError> {
        let mut terms = vec![self.parse_and(depth)?];
        while matches!(self.tokens.peek(), Some(Token::Or)) {
            self.bump();
            terms.push(self.parse_and(depth)?);
        }
        Ok(if terms.len() == 1 {
            terms.pop().unwrap_or(Node::Or(Vec::new()))
        } else {
            Node::Or(terms)
        })
    }

    /// `a and b`; also Salt's `a not b`, read as `a and not b`.
    fn parse_and(&mut self, depth: usize) -> Result<Node, TargetError> {
        let mut terms = vec![self.parse_not(depth)?];
        loop {
            match self.tokens.peek() {
                Some(Token::And) => {
                    self.bump();
                }
                Some(Token::Not) => {}
                _ => break,
            }
            terms.push(self.parse_not(depth)?);
        }
        Ok(if terms.len() == 1 {
            terms.pop().unwrap_or(Node::And(Vec::new()))
        } else {
            Node::And(terms)
        })
    }

    /// Any run of `not` (folded, so `not not not x` adds no depth).
    fn parse_not(&mut self, depth: usize) -> Result<Node, TargetError> {
        let mut negate = false;
        while matches!(self.tokens.peek(), Some(Token::Not)) {
            self.bump();
            negate = !negate;
        }
        let node = self.parse_primary(depth)?;
        Ok(if negate {
            Node::Not(Box::new(node))
        } else {
            node
        })
    }

    fn parse_primary(&mut self, depth: usize) -> Result<Node, TargetError> {
        let prev = self.prev.clone();
        match self.bump() {
            Some(Token::Leaf(node, _)) => Ok(node),
            Some(Token::Open) => {
                if depth >= MAX_DEPTH {
                    return Err(TargetError::new(format!(
                        "compound target nests parentheses deeper than {MAX_DEPTH}"
                    )));
                }
                if matches!(self.tokens.peek(), Some(Token::Close)) {
                    return Err(TargetError::new(
                        "empty parentheses `()` in compound target",
                    ));
                }
                let inner = self.parse_or(depth + 1)?;
                match self.tokens.next() {
                    Some(Token::Close) => {
                        self.prev = Some(")".to_owned());
                        Ok(inner)
                    }
                    None => Err(TargetError::new("unclosed `(` in compound target")),
                    Some(token) => Err(self.missing_operator(&token)),
                }
            }
            None => Err(TargetError::new(match prev.as_deref() {
                None => "empty compound target".to_owned(),
                Some("(") => "unclosed `(` in compound target".to_owned(),
                Some(op) => format!("dangling `{op}` at the end of the compound target"),
            })),
            Some(Token::Close) => Err(TargetError::new(match prev.as_deref() {
                None => "unmatched `)` in compound target".to_owned(),
                Some(op) => format!("`)` right after `{op}`: expected a matcher"),
            })),
            Some(op) => Err(TargetError::new(match prev.as_deref() {
                None => format!("compound target cannot start with `{}`", op.describe()),
                Some(before) => format!(
                    "`{}` right after `{before}`: expected a matcher, `not` or `(`",
                    op.describe()
                ),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(tgt_type: TargetType, expr: &str) -> Target {
        match Target::parse(tgt_type, expr) {
            Ok(t) => t,
            Err(e) => panic!("{tgt_type} {expr:?} rejected: {e}"),
        }
    }

    fn error(tgt_type: TargetType, expr: &str) -> String {
        match Target::parse(tgt_type, expr) {
            Ok(t) => panic!("{tgt_type} {expr:?} accepted as {t:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn glob(pattern: &str, id: &str) -> bool {
        parse(TargetType::Glob, pattern).matches(id, &Value::Null)
    }

    fn grains() -> Value {
        json!({
            "os": "Linux",
            "os_family": "Debian",
            "num_cpus": 8,
            "mem_gib": 1.5,
            "virtual": true,
            "selinux": false,
            "roles": ["web", "db", 42],
            "empty_list": [],
            "nothing": null,
            "locale": {"lang": "en_US", "encoding": "UTF-8"},
            "ipv6": ["::1", "fe80::1"],
            "disks": [{"name": "sda", "size": 100}, {"name": "sdb", "size": 200}],
            "deep": {"a": {"b": {"c": "bottom"}}},
            "a:b": "colon key"
        })
    }

    fn grain(expr: &str) -> bool {
        parse(TargetType::Grain, expr).matches("m1", &grains())
    }

    fn compound(expr: &str, id: &str, os: &str) -> bool {
        parse(TargetType::Compound, expr).matches(id, &json!({"os": os, "roles": ["web"]}))
    }

    // ------------------------------------------------------------ glob

    #[test]
    fn glob_literals_and_wildcards() {
        assert!(glob("web01", "web01"));
        assert!(!glob("web01", "web011"));
        assert!(!glob("web01", "web0"));
        assert!(glob("*", "anything"));
        assert!(glob("*", ""));
        assert!(glob("web*", "web"));
        assert!(glob("web*", "web-01.example.com"));
        assert!(!glob("web*", "db01"));
        assert!(glob("*01", "web01"));
        assert!(!glob("*01", "web011"));
        assert!(glob("*eb*", "web01"));
        assert!(glob("w?b01", "wab01"));
        assert!(!glob("w?b01", "wb01"));
        assert!(!glob("?", ""));
        assert!(glob("??", "ab"));
        assert!(glob("a**b", "ab"));
        assert!(glob("*a*b*", "xxaxxbxx"));
        assert!(!glob("*a*b*", "xxbxxaxx"));
    }

    #[test]
    fn glob_is_case_sensitive_and_trimmed() {
        assert!(!glob("Web*", "web01"));
        assert!(!glob("web*", "WEB01"));
        assert!(glob("  web*  ", "web01"));
    }

    #[test]
    fn glob_character_classes() {
        assert!(glob("web[12]", "web1"));
        assert!(glob("web[12]", "web2"));
        assert!(!glob("web[12]", "web3"));
        assert!(glob("web[0-9][0-9]", "web42"));
        assert!(!glob("web[0-9]", "weba"));
        assert!(glob("[a-cx]*", "xray"));
        assert!(!glob("[a-cx]*", "delta"));
        assert!(glob("web[!1]", "web2"));
        assert!(!glob("web[!1]", "web1"));
        assert!(glob("web[^1]", "web2"));
        assert!(!glob("web[^1]", "web1"));
        assert!(!glob("web[!0-9]", "web5"));
        assert!(glob("web[!0-9]", "webx"));
        // A class needs one character, not zero.
        assert!(!glob("web[12]", "web"));
    }

    #[test]
    fn glob_class_edge_cases_follow_fnmatch() {
        let g = |p: &str| Glob::new(p);
        // `]` first in a class is a member.
        assert!(g("[]]").matches("]"));
        assert!(g("[]a]").matches("a"));
        assert!(!g("[!]]").matches("]"));
        assert!(g("[!]]").matches("x"));
        // `-` at either end is a member.
        assert!(g("[a-]").matches("-"));
        assert!(g("[-a]").matches("-"));
        assert!(!g("[a-]").matches("b"));
        // An unclosed `[` is a literal.
        assert!(g("web[1").matches("web[1"));
        assert!(!g("web[1").matches("web1"));
        assert!(g("[").matches("["));
        assert!(g("[]").matches("[]"));
        assert!(g("[!]").matches("[!]"));
        // A reversed range holds nothing.
        assert!(!g("[z-a]").matches("m"));
        // No escapes: a backslash is an ordinary character.
        assert!(g("a\\*").matches("a\\xyz"));
        // Multi-byte characters count as one.
        assert!(g("caf?").matches("café"));
        assert!(g("[é]*").matches("été"));
        assert!(g("*é").matches("café"));
    }

    #[test]
    fn glob_collapses_stars() {
        assert_eq!(Glob::new("a***b").tokens.len(), 3);
        assert!(Glob::new("*").is_star());
        assert!(Glob::new("**").is_star());
        assert!(!Glob::new("*a").is_star());
    }

    #[test]
    fn glob_pathological_patterns_run_in_linear_ish_time() {
        let start = std::time::Instant::now();
        let text = "a".repeat(20_000);
        let pattern = format!("{}b", "*a".repeat(40));
        assert!(!Glob::new(&pattern).matches(&text));
        assert!(Glob::new(&format!("{}*", "*a".repeat(40))).matches(&text));
        let id = "a".repeat(128);
        assert!(!glob("*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b", &id));
        assert!(!glob(&"*?".repeat(200), &id));
        assert!(glob(&"*?".repeat(64), &id));
        // Exponential backtracking would take astronomically long here.
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
    }

    #[test]
    fn glob_unclosed_brackets_compile_linearly() {
        let pattern = "[".repeat(MAX_EXPR_LEN);
        let start = std::time::Instant::now();
        let target = parse(TargetType::Glob, &pattern);
        assert!(target.matches(&pattern, &Value::Null));
        assert!(!target.matches("[", &Value::Null));
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
    }

    // ------------------------------------------------------------ list

    #[test]
    fn list_matches_named_ids_only() {
        let t = parse(TargetType::List, "web01, web02 ,,db01,");
        assert!(t.matches("web01", &Value::Null));
        assert!(t.matches("web02", &Value::Null));
        assert!(t.matches("db01", &Value::Null));
        assert!(!t.matches("web03", &Value::Null));
        assert!(!t.matches("web0", &Value::Null));
        assert!(!t.matches(" web02", &Value::Null));
        // No globbing in lists.
        assert!(error(TargetType::List, "web*").contains("invalid id"));
    }

    #[test]
    fn list_ids_are_deduplicated_in_order() {
        let t = parse(TargetType::List, "b,a,b, c ,a");
        assert_eq!(
            t.listed_ids(),
            Some(vec!["b".to_owned(), "a".to_owned(), "c".to_owned()])
        );
    }

    #[test]
    fn list_errors() {
        assert!(error(TargetType::List, "").contains("empty list target"));
        assert!(error(TargetType::List, " , ,, ").contains("names no ids"));
        let traversal = error(TargetType::List, "web01,../etc");
        assert!(traversal.contains("../etc"), "{traversal}");
        assert!(error(TargetType::List, "a b").contains("invalid id"));
    }

    #[test]
    fn list_may_be_long_but_not_unbounded() {
        let many: Vec<String> = (0..5000).map(|i| format!("minion-{i:05}")).collect();
        let t = parse(TargetType::List, &many.join(","));
        assert!(t.matches("minion-04999", &Value::Null));
        assert_eq!(t.listed_ids().map(|ids| ids.len()), Some(5000));
        let huge = "a,".repeat(MAX_LIST_LEN);
        assert!(error(TargetType::List, &huge).contains("limit"));
    }

    // ------------------------------------------------------------ pcre

    #[test]
    fn pcre_is_anchored_at_both_ends() {
        let t = parse(TargetType::Pcre, r"web\d+");
        assert!(t.matches("web01", &Value::Null));
        assert!(!t.matches("web01x", &Value::Null));
        assert!(!t.matches("xweb01", &Value::Null));
        assert!(!t.matches("web", &Value::Null));
        let alt = parse(TargetType::Pcre, "web|db");
        assert!(alt.matches("web", &Value::Null));
        assert!(alt.matches("db", &Value::Null));
        assert!(!alt.matches("webdb", &Value::Null));
        assert!(!alt.matches("web1", &Value::Null));
        assert!(!alt.matches("xdb", &Value::Null));
        let group = parse(TargetType::Pcre, "(web|db)-[0-9]{2}");
        assert!(group.matches("db-07", &Value::Null));
        assert!(!group.matches("db-007", &Value::Null));
    }

    #[test]
    fn pcre_cannot_escape_its_anchors() {
        let e = error(TargetType::Pcre, "a)|(b");
        assert!(e.contains("bad pcre target"), "{e}");
        let e = error(TargetType::Pcre, "a)|(?:b");
        assert!(e.contains("a)|(?:b"), "{e}");
        // An `(?x)` comment would swallow the closing anchor: refused.
        assert!(Target::parse(TargetType::Pcre, "(?x)web #").is_err());
    }

    #[test]
    fn pcre_bad_regex_is_named() {
        let e = error(TargetType::Pcre, "web(");
        assert!(e.contains("bad pcre target `web(`"), "{e}");
        let e = error(TargetType::Pcre, "[z-a]");
        assert!(e.contains("[z-a]"), "{e}");
    }

    #[test]
    fn pcre_size_is_limited() {
        let e = error(TargetType::Pcre, r"\w{1000}\w{1000}\w{1000}");
        assert!(e.contains("size limit"), "{e}");
        assert!(error(TargetType::Pcre, &"a".repeat(MAX_EXPR_LEN + 1)).contains("limit"));
    }

    // ------------------------------------------------------------ grain

    #[test]
    fn grain_strings_by_glob() {
        assert!(grain("os:Linux"));
        assert!(grain("os:Lin*"));
        assert!(grain("os:[LW]inux"));
        assert!(!grain("os:linux"));
        assert!(!grain("os:Windows"));
        assert!(!grain("os:Linu"));
        assert!(grain("os_family:Deb?an"));
    }

    #[test]
    fn grain_nested_keys() {
        assert!(grain("locale:lang:en*"));
        assert!(grain("locale:lang:en_US"));
        assert!(!grain("locale:lang:fr*"));
        assert!(grain("locale:encoding:UTF-8"));
        assert!(grain("deep:a:b:c:bottom"));
        assert!(grain("deep:a:b:c:bot*"));
        assert!(!grain("deep:a:b:c:top"));
        // A dict matches `*` only (Salt: "the grain exists").
        assert!(grain("locale:*"));
        assert!(grain("deep:a:*"));
        assert!(!grain("locale:lang*"));
        // `:` always separates keys, so a key holding `:` cannot be named.
        assert!(!grain("a:b:colon key"));
        // Running out of segments at a dict is no match.
        assert!(!grain("deep:a:b:c"));
    }

    #[test]
    fn grain_values_with_colons() {
        assert!(grain("ipv6:fe80::1"));
        assert!(grain("ipv6:fe80::*"));
        assert!(grain("ipv6:::1"));
        assert!(!grain("ipv6:::2"));
    }

    #[test]
    fn grain_numbers_and_bools_by_string_form() {
        assert!(grain("num_cpus:8"));
        assert!(grain("num_cpus:[4-9]"));
        assert!(!grain("num_cpus:16"));
        assert!(grain("mem_gib:1.5"));
        assert!(grain("virtual:true"));
        assert!(grain("virtual:True"));
        assert!(!grain("virtual:false"));
        assert!(grain("selinux:false"));
        assert!(grain("selinux:False"));
        assert!(!grain("selinux:true"));
    }

    #[test]
    fn grain_lists_match_any_element() {
        assert!(grain("roles:web"));
        assert!(grain("roles:db"));
        assert!(grain("roles:d?"));
        assert!(grain("roles:42"));
        assert!(!grain("roles:mail"));
        assert!(!grain("empty_list:*"));
        // Into lists of dicts by key, or by index.
        assert!(grain("disks:name:sdb"));
        assert!(grain("disks:size:200"));
        assert!(!grain("disks:name:sdc"));
        assert!(grain("disks:1:name:sdb"));
        assert!(!grain("disks:0:name:sdb"));
        assert!(!grain("disks:9:name:*"));
    }

    #[test]
    fn grain_missing_keys_never_match() {
        assert!(!grain("kernel:*"));
        assert!(!grain("locale:region:*"));
        assert!(!grain("os:Linux:extra:*"));
        assert!(!grain("nothing:*"));
        assert!(!grain("nothing:null"));
        let t = parse(TargetType::Grain, "os:*");
        assert!(!t.matches("m1", &Value::Null));
        assert!(!t.matches("m1", &json!(["os"])));
        assert!(!t.matches("m1", &json!("os:Linux")));
        assert!(t.matches("m1", &json!({"os": ""})));
    }

    #[test]
    fn grain_errors() {
        assert!(error(TargetType::Grain, "os").contains("key:pattern"));
        assert!(error(TargetType::Grain, ":Linux").contains("empty key"));
        assert!(error(TargetType::Grain, "   ").contains("empty grain target"));
    }

    #[test]
    fn grain_empty_pattern_matches_empty_value() {
        let t = parse(TargetType::Grain, "os:");
        assert!(t.matches("m", &json!({"os": ""})));
        assert!(!t.matches("m", &json!({"os": "Linux"})));
    }

    #[test]
    fn grain_key_depth_is_capped_without_error() {
        let expr = format!("{}x", "k:".repeat(100));
        let t = parse(TargetType::Grain, &expr);
        assert_eq!(t.listed_ids(), None);
        let mut deep = json!("x");
        for _ in 0..100 {
            deep = json!({ "k": deep });
        }
        // Only the first 16 segments may be keys, so the walk stops short.
        assert!(!t.matches("m", &deep));
        let mut shallow = json!(format!("{}x", "k:".repeat(100 - MAX_KEY_DEPTH)));
        for _ in 0..MAX_KEY_DEPTH {
            shallow = json!({ "k": shallow });
        }
        assert!(t.matches("m", &shallow));
    }

    // ------------------------------------------------------------ compound

    #[test]
    fn compound_bare_words_are_id_globs() {
        assert!(compound("web*", "web1", "Linux"));
        assert!(!compound("web*", "db1", "Linux"));
        assert!(compound("web[12]", "web2", "Linux"));
    }

    #[test]
    fn compound_matchers() {
        assert!(compound("G@os:Linux", "x", "Linux"));
        assert!(!compound("G@os:Linux", "x", "Windows"));
        assert!(compound("G@roles:web", "x", "Linux"));
        assert!(compound("P@os:(Linux|BSD)", "x", "BSD"));
        assert!(!compound("P@os:Lin", "x", "Linux"));
        assert!(!compound("P@os:(Linux|BSD)", "x", "Windows"));
        assert!(compound(r"E@web\d+", "web12", "Linux"));
        assert!(!compound(r"E@web\d+", "web12x", "Linux"));
        assert!(compound("L@a,b,c", "b", "Linux"));
        assert!(!compound("L@a,b,c", "d", "Linux"));
    }

    #[test]
    fn compound_p_at_tries_every_split() {
        let t = parse(TargetType::Compound, "P@ipv6:fe80::.*");
        assert!(t.matches("m", &grains()));
        let t = parse(TargetType::Compound, "P@locale:lang:en_.*");
        assert!(t.matches("m", &grains()));
        assert!(!parse(TargetType::Compound, "P@locale:lang:fr.*").matches("m", &grains()));
        assert!(parse(TargetType::Compound, "P@roles:w.b").matches("m", &grains()));
    }

    #[test]
    fn compound_and_or() {
        assert!(compound("web* and G@os:Linux", "web1", "Linux"));
        assert!(!compound("web* and G@os:Linux", "web1", "Windows"));
        assert!(!compound("web* and G@os:Linux", "db1", "Linux"));
        assert!(compound("web* or db*", "db1", "Linux"));
        assert!(!compound("web* or db*", "mail1", "Linux"));
        assert!(compound("a or b or c", "c", "x"));
        assert!(compound("a* and *b and ?m?b", "amlb", "x"));
    }

    #[test]
    fn compound_and_binds_tighter_than_or() {
        let expr = "web* or db* and G@os:Windows";
        // web* or (db* and G@os:Windows)
        assert!(compound(expr, "web1", "Linux"));
        assert!(!compound(expr, "db1", "Linux"));
        assert!(compound(expr, "db1", "Windows"));
        let expr = "db* and G@os:Windows or web*";
        assert!(compound(expr, "web1", "Linux"));
        assert!(!compound(expr, "db1", "Linux"));
    }

    #[test]
    fn compound_not_binds_tightest() {
        assert!(compound("not web*", "db1", "Linux"));
        assert!(!compound("not web*", "web1", "Linux"));
        assert!(compound("not not web*", "web1", "Linux"));
        assert!(!compound("not not not web*", "web1", "Linux"));
        // (not web*) and G@os:Linux
        assert!(!compound("not web* and G@os:Linux", "db1", "Windows"));
        assert!(compound("not web* and G@os:Linux", "db1", "Linux"));
        // (not web*) or db*
        assert!(compound("not web* or db*", "mail", "Linux"));
        assert!(!compound("not web* or db*", "web1", "Linux"));
        assert!(compound("web* and not G@os:Windows", "web1", "Linux"));
        assert!(!compound("web* and not G@os:Windows", "web1", "Windows"));
    }

    #[test]
    fn compound_not_after_a_matcher_means_and_not() {
        // Salt reads `a not b` as `a and not b`.
        assert!(compound("web* not web2", "web1", "Linux"));
        assert!(!compound("web* not web2", "web2", "Linux"));
        assert!(!compound("web* not web2", "db1", "Linux"));
        assert!(compound("(web* or db*) not db2", "db1", "Linux"));
        assert!(!compound("(web* or db*) not db2", "db2", "Linux"));
    }

    #[test]
    fn compound_parentheses() {
        let expr = "( web* or db* ) and G@os:Windows";
        assert!(!compound(expr, "web1", "Linux"));
        assert!(compound(expr, "web1", "Windows"));
        assert!(compound(expr, "db1", "Windows"));
        assert!(!compound(expr, "mail", "Windows"));
        assert!(compound("not ( web* or db* )", "mail", "x"));
        assert!(!compound("not ( web* or db* )", "db1", "x"));
        assert!(compound("( ( ( web1 ) ) )", "web1", "x"));
    }

    #[test]
    fn compound_attached_parentheses() {
        let expr = "(web* or db*) and G@os:Windows";
        assert!(!compound(expr, "web1", "Linux"));
        assert!(compound(expr, "db1", "Windows"));
        assert!(compound("((web1))", "web1", "x"));
        assert!(compound("not(web*)and(db*)", "db1", "x"));
        assert!(!compound("not(web*)and(db*)", "web1", "x"));
        assert!(compound("(web*)or(db*)", "db1", "x"));
        let t = parse(TargetType::Compound, r"not(E@(web|db)\d+)");
        assert!(t.matches("mail1", &Value::Null));
        assert!(!t.matches("web1", &Value::Null));
        assert!(compound("(not web*) and (db* or mail*)", "mail1", "x"));
        assert!(!compound("(not web*) and (db* or mail*)", "web1", "x"));
        assert!(compound(
            "not (web* or (db* and G@os:Windows))",
            "db1",
            "Linux"
        ));
        assert!(!compound(
            "not (web* or (db* and G@os:Windows))",
            "db1",
            "Windows"
        ));
    }

    #[test]
    fn compound_regex_parentheses_are_not_grouping() {
        let t = parse(TargetType::Compound, r"E@(web|db)\d+ and G@os:Linux");
        assert!(t.matches("db7", &json!({"os": "Linux"})));
        assert!(!t.matches("mail7", &json!({"os": "Linux"})));
        let t = parse(TargetType::Compound, r"(E@(web|db)\d+) or L@mail");
        assert!(t.matches("web1", &Value::Null));
        assert!(t.matches("mail", &Value::Null));
        assert!(!t.matches("mail1", &Value::Null));
        let t = parse(TargetType::Compound, "(mail or P@os:(Linux|BSD))");
        assert!(t.matches("x", &json!({"os": "BSD"})));
        assert!(!t.matches("x", &json!({"os": "Windows"})));
    }

    #[test]
    fn compound_structural_errors() {
        let c = |expr: &str| error(TargetType::Compound, expr);
        assert!(c("").contains("empty compound target"));
        assert!(c(" \t ").contains("empty compound target"));
        assert!(c("web* and").contains("dangling `and`"));
        assert!(c("web* or").contains("dangling `or`"));
        assert!(c("not").contains("dangling `not`"));
        assert!(c("web* and not").contains("dangling `not`"));
        assert!(c("and web*").contains("cannot start with `and`"));
        assert!(c("or web*").contains("cannot start with `or`"));
        assert!(c("web* and or db*").contains("`or` right after `and`"));
        assert!(c("web* or and db*").contains("`and` right after `or`"));
        assert!(c("( and web* )").contains("`and` right after `(`"));
        assert!(c("not and web*").contains("`and` right after `not`"));
        assert!(c("(web*").contains("unclosed `(`"));
        assert!(c("( web* or ( db* )").contains("unclosed `(`"));
        assert!(c("web* and (").contains("unclosed `(`"));
        assert!(c("web*)").contains("unmatched `)`"));
        assert!(c(")").contains("unmatched `)`"));
        assert!(c("( web* ) )").contains("unmatched `)`"));
        assert!(c("web* and )").contains("`)` right after `and`"));
        assert!(c("()").contains("empty parentheses"));
        assert!(c("web* and ( )").contains("empty parentheses"));
        assert!(c("web* db*").contains("missing `and`/`or` between `web*` and `db*`"));
        assert!(c("(web*) db*").contains("missing `and`/`or` between `)` and `db*`"));
        assert!(c("web* (db*)").contains("missing `and`/`or` between `web*` and `(`"));
        assert!(c("(web*)(db*)").contains("missing `and`/`or`"));
        assert!(c("(web* db*)").contains("missing `and`/`or` between `web*` and `db*`"));
        assert!(c("(web*)(db*)").contains("between `)` and `(`"));
        assert!(c("we(b*").contains("missing `and`/`or` between `we` and `(`"));
    }

    #[test]
    fn compound_matcher_errors() {
        let c = |expr: &str| error(TargetType::Compound, expr);
        for (prefix, what) in [
            ("I", "pillar"),
            ("J", "pillar regex"),
            ("S", "subnet"),
            ("R", "range"),
            ("N", "nodegroup"),
        ] {
            let e = c(&format!("web* and {prefix}@x:y"));
            assert!(e.contains(&format!("{prefix}@ ({what}")), "{e}");
            assert!(e.contains("not supported"), "{e}");
        }
        assert!(c("X@foo").contains("unknown matcher `X@`"));
        assert!(c("G@").contains("`G@` needs a pattern"));
        assert!(c("L@").contains("`L@` needs a pattern"));
        assert!(c("L@,,").contains("names no ids"));
        assert!(c("L@web*").contains("invalid id"));
        assert!(c("G@os").contains("key:pattern"));
        assert!(c("P@os:Lin(").contains("bad grain regex (P@)"));
        assert!(c("E@web(").contains("bad E@ regex `web(`"));
        assert!(c("g@os:Linux").contains("not a matcher"));
        assert!(c("G|@os|Linux").contains("not a matcher"));
    }

    #[test]
    fn compound_length_and_depth_limits() {
        let nested = |n: usize| format!("{}web1{}", "( ".repeat(n), " )".repeat(n));
        assert!(parse(TargetType::Compound, &nested(MAX_DEPTH)).matches("web1", &Value::Null));
        let e = error(TargetType::Compound, &nested(MAX_DEPTH + 1));
        assert!(e.contains("deeper than 32"), "{e}");
        let e = error(TargetType::Compound, &"(".repeat(2000));
        assert!(e.contains("deeper than 32"), "{e}");
        let e = error(TargetType::Compound, &"web* or ".repeat(600));
        assert!(e.contains("limit is 4096"), "{e}");
        // Long flat chains and long `not` runs are fine and add no depth.
        let chain = format!("a{}", " or a".repeat(800));
        assert!(parse(TargetType::Compound, &chain).matches("a", &Value::Null));
        let nots = format!("{}web1", "not ".repeat(1000));
        assert!(parse(TargetType::Compound, &nots).matches("web1", &Value::Null));
        let nots = format!("{}web1", "not ".repeat(1001));
        assert!(!parse(TargetType::Compound, &nots).matches("web1", &Value::Null));
    }

    // ------------------------------------------------------------ listed_ids

    #[test]
    fn listed_ids_only_for_plain_lists() {
        let ids = |t: TargetType, e: &str| parse(t, e).listed_ids();
        let ab = Some(vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(ids(TargetType::List, "a, b"), ab);
        assert_eq!(ids(TargetType::Compound, "L@a,b"), ab);
        assert_eq!(ids(TargetType::Compound, " ( L@a,b ) "), ab);
        assert_eq!(ids(TargetType::Compound, "(L@a,b)"), ab);
        assert_eq!(ids(TargetType::Compound, "L@a or L@b"), None);
        assert_eq!(ids(TargetType::Compound, "not L@a,b"), None);
        assert_eq!(ids(TargetType::Compound, "L@a,b and G@os:x"), None);
        assert_eq!(ids(TargetType::Glob, "a"), None);
        assert_eq!(ids(TargetType::Pcre, "a|b"), None);
        assert_eq!(ids(TargetType::Grain, "os:a"), None);
    }

    // ------------------------------------------------------------ robustness

    #[test]
    fn every_type_rejects_empty_expressions() {
        for t in [
            TargetType::Glob,
            TargetType::List,
            TargetType::Pcre,
            TargetType::Grain,
            TargetType::Compound,
        ] {
            assert!(error(t, "").contains(&format!("empty {t} target")));
            assert!(error(t, "  \n ").contains("empty"));
        }
    }

    #[test]
    fn no_input_panics() {
        // Deterministic pseudo-random expressions over the awkward characters.
        let alphabet: Vec<char> = "ab*?[]!^-:,()@GPELIN \\|.{}$é".chars().collect();
        let words = ["and", "or", "not", "(", ")", "G@", "L@", "E@", "P@"];
        let grains = grains();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut accepted = 0;
        let mut rejected = 0;
        for _ in 0..3000 {
            let len = (next() % 24) as usize;
            let mut expr = String::new();
            for _ in 0..len {
                let r = next();
                if r % 5 == 0 {
                    expr.push(' ');
                    expr.push_str(words[(r / 5) as usize % words.len()]);
                    expr.push(' ');
                } else {
                    expr.push(alphabet[(r / 5) as usize % alphabet.len()]);
                }
            }
            for t in [
                TargetType::Glob,
                TargetType::List,
                TargetType::Pcre,
                TargetType::Grain,
                TargetType::Compound,
            ] {
                match Target::parse(t, &expr) {
                    Ok(target) => {
                        accepted += 1;
                        let _ = target.matches("ab", &grains);
                        let _ = target.matches("", &Value::Null);
                        let _ = target.listed_ids();
                    }
                    Err(e) => {
                        rejected += 1;
                        assert!(!e.to_string().is_empty());
                    }
                }
            }
        }
        assert!(accepted > 0 && rejected > 0, "{accepted} / {rejected}");
    }

    #[test]
    fn target_is_clone_and_debug() {
        let t = parse(TargetType::Compound, "web* and G@os:Linux");
        let copy = t.clone();
        assert!(copy.matches("web1", &json!({"os": "Linux"})));
        assert!(format!("{t:?}").contains("Grain"));
    }
}
