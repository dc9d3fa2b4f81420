//! Reading SQL as `pg_get_expr` prints it (and the one-statement bodies of SQL functions):
//! tokens, and the ways the analysers cut them (at an operator, at a keyword, without the
//! parentheses around them).

/// `tokens` split at every `keyword` outside parentheses (one part when there is none).
pub(super) fn split_all<'t>(tokens: &'t [Token], keyword: &str) -> Vec<&'t [Token]> {
    let mut parts = vec![];
    let (mut depth, mut start) = (0i32, 0);
    for (i, token) in tokens.iter().enumerate() {
        match token.text.as_str() {
            "(" => depth += 1,
            ")" => depth -= 1,
            text if depth == 0 && !token.quoted && text.eq_ignore_ascii_case(keyword) => {
                parts.push(&tokens[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&tokens[start..]);
    parts
}

/// The only token of `side`.
pub(super) fn single(side: &[Token]) -> Option<&Token> {
    match side {
        [t] => Some(t),
        _ => None,
    }
}

/// The source text `tokens` span in `sql`.
pub(super) fn text_of(sql: &str, tokens: &[Token]) -> Option<String> {
    let start = tokens.first()?.start;
    let end = tokens.last().map(|t| t.start + t.text.len())?;
    Some(sql[start..end].trim().to_string())
}

/// Without the parentheses that enclose all of `tokens` (repeatedly).
pub(super) fn unwrap(mut tokens: &[Token]) -> &[Token] {
    while let [open, inner @ .., close] = tokens {
        if open.text != "(" || close.text != ")" || closes_before_opening(inner) {
            break;
        }
        tokens = inner;
    }
    tokens
}

/// Whether a parenthesis in `tokens` closes one they did not open (then the pair around them
/// was two separate groups, as in `(a) = (b)`).
pub(super) fn closes_before_opening(tokens: &[Token]) -> bool {
    let mut depth = 0i32;
    for t in tokens {
        match t.text.as_str() {
            "(" => depth += 1,
            ")" => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

/// `tokens` split at the only `operator` (an operator or unquoted keyword) outside parentheses.
pub(super) fn split_at<'t>(tokens: &'t [Token], operator: &str) -> Option<(&'t [Token], &'t [Token])> {
    let mut depth = 0i32;
    let mut split = None;
    for (i, token) in tokens.iter().enumerate() {
        match token.text.as_str() {
            "(" => depth += 1,
            ")" => depth -= 1,
            text if depth == 0
                && !token.quoted
                && text.eq_ignore_ascii_case(operator)
                && split.replace(i).is_some() =>
            {
                return None;
            }
            _ => {}
        }
    }
    let split = split?;
    Some((&tokens[..split], &tokens[split + 1..]))
}

/// The parts of a (maybe dotted, maybe quoted) identifier, as the catalog names them.
pub(super) fn parts(token: &Token) -> Option<Vec<String>> {
    if token.text.starts_with('\'') || token.text.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let bytes = token.text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'"' {
            let end = past_quoted(bytes, i)?;
            out.push(token.text[i + 1..end - 1].replace("\"\"", "\""));
            i = end;
        } else {
            let end = token.text[i..].find('.').map_or(bytes.len(), |d| i + d);
            out.push(token.text[i..end].to_ascii_lowercase());
            i = end;
        }
        if bytes.get(i) == Some(&b'.') {
            i += 1;
        }
    }
    Some(out)
}

#[derive(Debug, PartialEq)]
pub(super) struct Token {
    pub text: String,
    pub start: usize,
    pub quoted: bool,
}

/// SQL as `pg_get_expr` prints it: identifiers (maybe dotted, maybe quoted), string literals,
/// numbers, operators and parentheses. `None` on anything unexpected.
pub(super) fn tokens(sql: &str) -> Option<Vec<Token>> {
    let bytes = sql.as_bytes();
    let token = |start: usize, end: usize, quoted| Token {
        text: sql[start..end].to_string(),
        start,
        quoted,
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if sql[i..].starts_with("--") {
            // A comment (in a function's body), to the end of its line.
            i = sql[i..].find('\n').map_or(bytes.len(), |n| i + n);
            continue;
        }
        if c == '$' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
            // A function's parameter by number (`$1`).
            i += 1;
            while bytes.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            out.push(token(start, i, false));
            continue;
        }
        if c == '\'' {
            i = past_quoted(bytes, i)?;
            out.push(token(start, i, false));
            continue;
        }
        if c == '"' || c.is_ascii_alphabetic() || c == '_' {
            // An identifier, possibly dotted (`auth.uid`), parts possibly quoted.
            let mut quoted = false;
            loop {
                if bytes.get(i) == Some(&b'"') {
                    quoted = true;
                    i = past_quoted(bytes, i)?;
                } else {
                    while bytes
                        .get(i)
                        .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'$')
                    {
                        i += 1;
                    }
                }
                if bytes.get(i) == Some(&b'.')
                    && bytes
                        .get(i + 1)
                        .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'"' || *b == b'_')
                {
                    i += 1;
                    continue;
                }
                break;
            }
            out.push(token(start, i, quoted));
            continue;
        }
        if c.is_ascii_digit() {
            while bytes.get(i).is_some_and(|b| b.is_ascii_digit() || *b == b'.') {
                i += 1;
            }
            out.push(token(start, i, false));
            continue;
        }
        let operator = ["->>", "::", "->", "(", ")", ",", "=", "[", "]"]
            .into_iter()
            .find(|op| sql[i..].starts_with(op))?;
        i += operator.len();
        out.push(token(start, i, false));
    }
    Some(out)
}

/// Where a quoted literal (`'...'`) or identifier (`"..."`) opening at `open` ends: the index
/// after its closing quote; a doubled quote is one inside it. `None` if it never closes.
pub(super) fn past_quoted(bytes: &[u8], open: usize) -> Option<usize> {
    let quote = bytes[open];
    let mut i = open + 1;
    loop {
        match bytes.get(i) {
            Some(&b) if b == quote && bytes.get(i + 1) == Some(&quote) => i += 2,
            Some(&b) if b == quote => return Some(i + 1),
            Some(_) => i += 1,
            None => return None,
        }
    }
}
