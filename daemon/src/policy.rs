//! `allowed_commands`: which commands may run on a host.
//!
//! The remote shell re-parses whatever string we send, so a check on the raw string can always
//! be walked around (`ls; touch x`). Instead the command is parsed here as POSIX shell words, and
//! anything the shell would treat as more than plain words is refused: separators, pipes,
//! redirections, substitutions, expansions, globs, comments, assignments, control bytes. The
//! words are then matched against the rules and sent re-quoted, so the remote shell sees exactly
//! the words that were checked, as one simple command.
//!
//! Quoting is accepted in arguments (`grep 'a b' file`), never in the words a rule matches:
//! `l''s`, `\ls` and `"ls"` are refused where the rule is `ls`, since they only serve to disguise.

use std::fmt;

/// Longest command accepted on a restricted host.
pub const MAX_COMMAND_LEN: usize = 16 * 1024;

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The command is more than plain words; the reason names the construct.
    NotPlainWords(String),
    /// Plain words, but no rule allows them.
    NotAllowed,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotPlainWords(why) => write!(f, "{why}"),
            Refusal::NotAllowed => write!(f, "it does not start with an allowed command"),
        }
    }
}

/// One word as written: its value, and whether any quoting or escaping was used to write it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Word {
    value: String,
    quoted: bool,
}

/// The rules of one host.
#[derive(Debug, Clone)]
pub struct CommandPolicy {
    rules: Vec<Vec<String>>,
    /// The rules as written in hosts.json, for messages.
    written: Vec<String>,
}

impl CommandPolicy {
    /// Builds the policy from hosts.json entries, each of which must be plain words itself.
    pub fn new(entries: &[String]) -> Result<CommandPolicy, String> {
        let mut rules = Vec::with_capacity(entries.len());
        for entry in entries {
            let words = parse_words(entry)
                .map_err(|why| format!("allowed_commands entry {entry:?}: {why}"))?;
            if words.is_empty() {
                return Err("allowed_commands must not contain an empty entry".into());
            }
            if words.iter().any(|w| w.quoted) {
                return Err(format!(
                    "allowed_commands entry {entry:?}: write rules as plain words, without quotes"
                ));
            }
            rules.push(words.into_iter().map(|w| w.value).collect());
        }
        Ok(CommandPolicy {
            rules,
            written: entries.to_vec(),
        })
    }

    /// The rules as written, for "what is allowed" messages.
    pub fn describe(&self) -> String {
        self.written
            .iter()
            .map(|r| format!("{r:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Checks `command`; on success returns it re-quoted, ready to send to the remote shell.
    pub fn check(&self, command: &str) -> Result<String, Refusal> {
        let words = parse_words(command).map_err(Refusal::NotPlainWords)?;
        if words.is_empty() {
            return Err(Refusal::NotPlainWords("the command is empty".into()));
        }
        if let Some(first) = words.first()
            && !first.quoted
            && is_assignment(&first.value)
        {
            return Err(Refusal::NotPlainWords(format!(
                "{:?} is an environment assignment; commands must start with the program name",
                first.value
            )));
        }
        let allowed = self.rules.iter().any(|rule| {
            rule.len() <= words.len()
                && rule
                    .iter()
                    .zip(&words)
                    .all(|(r, w)| !w.quoted && *r == w.value)
        });
        if !allowed {
            let disguised = self.rules.iter().any(|rule| {
                rule.len() <= words.len() && rule.iter().zip(&words).all(|(r, w)| *r == w.value)
            });
            return Err(if disguised {
                Refusal::NotPlainWords(
                    "the command name is quoted or escaped; write it plainly".into(),
                )
            } else {
                Refusal::NotAllowed
            });
        }
        Ok(words
            .iter()
            .map(|w| quote(&w.value))
            .collect::<Vec<_>>()
            .join(" "))
    }
}

/// Quotes a word for a POSIX shell: single quotes, with `'` written as `'\''`.
pub fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

fn is_assignment(word: &str) -> bool {
    let Some((name, _)) = word.split_once('=') else {
        return false;
    };
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Unquoted characters that are ordinary in every POSIX shell (and in bash and zsh).
fn is_plain(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(c, '-' | '_' | '.' | '/' | ':' | ',' | '=' | '+' | '@' | '%')
}

/// Invisible or direction-changing characters that could make text read differently from
/// what it is; refused even inside quotes.
fn is_deceptive(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{00AD}')
}

fn describe_unquoted(c: char) -> String {
    let what = match c {
        ';' | '&' => "a command separator",
        '|' => "a pipe",
        '<' | '>' => "a redirection",
        '$' => "parameter, command or arithmetic expansion",
        '`' => "command substitution",
        '(' | ')' => "a subshell or process substitution",
        '*' | '?' | '[' | ']' => "a glob pattern",
        '{' | '}' => "brace expansion",
        '~' => "tilde expansion",
        '#' => "a comment",
        '!' => "history expansion or pipeline negation",
        '^' => "a pipe in some shells",
        '\\' => "a backslash escape",
        '\n' | '\r' => "a line break (a command separator)",
        c if c.is_control() => "a control character",
        c if !c.is_ascii() => "a non-ASCII character (it could imitate another)",
        _ => "a shell special character",
    };
    format!(
        "{c:?} is {what}; only plain words are allowed on this host (quote arguments that need it)"
    )
}

/// Splits `input` into words the way a POSIX shell would, refusing everything but literal words.
fn parse_words(input: &str) -> Result<Vec<Word>, String> {
    if input.len() > MAX_COMMAND_LEN {
        return Err(format!(
            "the command is {} bytes long; at most {MAX_COMMAND_LEN} are allowed here",
            input.len()
        ));
    }
    let mut words = Vec::new();
    let mut current: Option<Word> = None;
    let mut chars = input.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if let Some(word) = current.take() {
                    words.push(word);
                }
            }
            '\'' => {
                let word = word_in_progress(&mut current, true);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.value.push(checked_quoted(c)?),
                        None => return Err("unbalanced single quote".into()),
                    }
                }
            }
            '"' => {
                let word = word_in_progress(&mut current, true);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('$') => return Err("\"$\" inside double quotes is expansion; use single quotes".into()),
                        Some('`') => return Err("a backtick inside double quotes is command substitution".into()),
                        Some('!') => return Err("\"!\" inside double quotes is history expansion in bash".into()),
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '\\')) => word.value.push(e),
                            Some(_) => return Err("backslash escapes inside double quotes are not allowed here; use single quotes".into()),
                            None => return Err("unbalanced double quote".into()),
                        },
                        Some(c) => word.value.push(checked_quoted(c)?),
                        None => return Err("unbalanced double quote".into()),
                    }
                }
            }
            c if is_plain(c) => word_in_progress(&mut current, false).value.push(c),
            c => return Err(describe_unquoted(c)),
        }
    }
    if let Some(word) = current.take() {
        words.push(word);
    }
    Ok(words)
}

/// The word being built (starting one if needed); `quoted` marks it as written with quotes.
fn word_in_progress(current: &mut Option<Word>, quoted: bool) -> &mut Word {
    let word = current.get_or_insert(Word {
        value: String::new(),
        quoted,
    });
    word.quoted |= quoted;
    word
}

/// A character inside quotes: anything printable, but no control or deceptive characters.
fn checked_quoted(c: char) -> Result<char, String> {
    if c.is_control() {
        return Err(format!("{c:?} is a control character"));
    }
    if is_deceptive(c) {
        return Err(format!(
            "{c:?} is an invisible or direction-changing character"
        ));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &[&str]) -> CommandPolicy {
        CommandPolicy::new(&rules.iter().map(|r| r.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn prefixes_should_match_whole_words() {
        let p = policy(&["nvidia-smi", "docker ps", "ls"]);
        assert_eq!(p.check("nvidia-smi -L"), Ok("'nvidia-smi' '-L'".into()));
        assert_eq!(p.check("docker ps -a"), Ok("'docker' 'ps' '-a'".into()));
        assert_eq!(p.check("docker   ps"), Ok("'docker' 'ps'".into()));
        assert_eq!(p.check("docker run alpine"), Err(Refusal::NotAllowed));
        assert_eq!(p.check("docker"), Err(Refusal::NotAllowed));
        assert_eq!(p.check("/bin/ls"), Err(Refusal::NotAllowed));
        assert_eq!(p.check("lsblk"), Err(Refusal::NotAllowed));
    }

    #[test]
    fn quoted_arguments_should_pass_and_be_requoted() {
        let p = policy(&["grep"]);
        assert_eq!(
            p.check(r#"grep "a b" 'c;d' x"#),
            Ok(r#"'grep' 'a b' 'c;d' 'x'"#.into())
        );
        assert_eq!(
            p.check(r#"grep "it's" f"#),
            Ok(r#"'grep' 'it'\''s' 'f'"#.into())
        );
        assert_eq!(
            p.check(r#"grep "say \"hi\"" f"#),
            Ok(r#"'grep' 'say "hi"' 'f'"#.into())
        );
        assert_eq!(
            p.check("grep 'héllo wörld' f"),
            Ok("'grep' 'héllo wörld' 'f'".into())
        );
        assert_eq!(p.check("grep '' f"), Ok("'grep' '' 'f'".into()));
    }

    #[test]
    fn rules_must_be_plain_words() {
        assert!(CommandPolicy::new(&["ls; rm".to_string()]).is_err());
        assert!(CommandPolicy::new(&["'ls'".to_string()]).is_err());
        assert!(CommandPolicy::new(&["  ".to_string()]).is_err());
    }

    /// Bypass attempts, by class. Every one must be refused on a host that allows `ls`,
    /// `cat /var/log/syslog` and `docker ps`.
    pub const BYPASSES: &[(&str, &str)] = &[
        // separators
        ("separator", "ls; touch x"),
        ("separator", "ls ;touch x"),
        ("separator", "ls;touch x"),
        ("separator", "ls & touch x"),
        ("separator", "ls && touch x"),
        ("separator", "ls || touch x"),
        ("separator", "ls\ntouch x"),
        ("separator", "ls\rtouch x"),
        ("separator", "ls\r\ntouch x"),
        // pipes
        ("pipe", "ls | sh"),
        ("pipe", "ls|sh"),
        ("pipe", "ls |& sh"),
        ("pipe", "ls ^ sh"),
        // redirections
        ("redirection", "ls > /etc/passwd"),
        ("redirection", "ls >> ~/.bashrc"),
        ("redirection", "ls < /etc/shadow"),
        ("redirection", "ls 2>&1"),
        ("redirection", "ls <<EOF"),
        ("redirection", "ls &> out"),
        ("redirection", "ls >| out"),
        // command substitution
        ("substitution", "ls $(touch x)"),
        ("substitution", "ls `touch x`"),
        ("substitution", "ls \"$(touch x)\""),
        ("substitution", "ls \"`touch x`\""),
        ("substitution", "$(echo ls)"),
        // process substitution
        ("process substitution", "ls <(touch x)"),
        ("process substitution", "ls >(touch x)"),
        ("subshell", "(touch x)"),
        ("subshell", "ls (x)"),
        // parameter and arithmetic expansion
        ("expansion", "ls $HOME"),
        ("expansion", "ls ${HOME}"),
        ("expansion", "ls \"$HOME\""),
        ("expansion", "ls $((1+1))"),
        ("expansion", "ls $'\\x3b'"),
        ("expansion", "S=sudo; $S id"),
        ("expansion", "ls $IFS"),
        // globbing
        ("glob", "ls *"),
        ("glob", "ls /etc/*"),
        ("glob", "ls ?"),
        ("glob", "ls [a-z]"),
        ("glob", "cat /var/log/sys*"),
        // brace and tilde expansion
        ("brace", "ls {a,b}"),
        ("brace", "ls {1..3}"),
        ("tilde", "ls ~"),
        ("tilde", "ls ~root"),
        // comments and negation
        ("comment", "ls # touch x"),
        ("comment", "ls #"),
        ("negation", "! ls"),
        ("history", "ls !!"),
        ("history", "ls \"!!\""),
        // assignments
        ("assignment", "PATH=/tmp ls"),
        ("assignment", "LD_PRELOAD=/tmp/x.so ls"),
        ("assignment", "A=1"),
        // quoting tricks on the command word
        ("quoting", "l''s"),
        ("quoting", "l\"\"s"),
        ("quoting", "\\ls"),
        ("quoting", "\"ls\""),
        ("quoting", "'ls'"),
        ("quoting", "\"ls\"x"),
        ("quoting", "'docker' ps"),
        ("quoting", "docker 'ps'"),
        ("quoting", "l\\s"),
        ("quoting", "ls\\;touch x"),
        // unbalanced quotes
        ("unbalanced", "ls 'x"),
        ("unbalanced", "ls \"x"),
        ("unbalanced", "ls \"x\\"),
        // control bytes
        ("control", "ls\0touch x"),
        ("control", "ls \u{7}"),
        ("control", "ls \u{1b}[2J"),
        ("control", "ls '\u{0}'"),
        ("control", "ls\u{b}x"),
        ("control", "ls\u{c}x"),
        // unicode look-alikes and invisible characters
        ("unicode", "ｌs"),
        ("unicode", "ls；touch x"),
        ("unicode", "ls\u{037e}touch x"),
        ("unicode", "ls\u{2028}touch x"),
        ("unicode", "ls\u{00a0}-la"),
        ("unicode", "l\u{200b}s"),
        ("unicode", "ls '\u{202e}txt.exe'"),
        ("unicode", "ⅼs"),
        // backslash escapes inside double quotes
        ("escape", "ls \"\\$HOME\""),
        // not an allowed command at all
        ("not allowed", "sh -c ls"),
        ("not allowed", "bash"),
        ("not allowed", "/bin/ls"),
        ("not allowed", "./ls"),
        ("not allowed", "lsblk"),
        ("not allowed", "cat /etc/shadow"),
        ("not allowed", "cat /var/log/syslog.1"),
        ("not allowed", "docker run alpine"),
        ("not allowed", "dockerps"),
        ("not allowed", "sudo ls"),
        ("not allowed", "exec ls"),
        ("not allowed", "command ls"),
        ("not allowed", "env ls"),
        ("not allowed", ""),
        ("not allowed", "   "),
    ];

    #[test]
    fn bypass_attempts_should_all_be_refused() {
        let p = policy(&["ls", "cat /var/log/syslog", "docker ps"]);
        let mut refused = 0;
        for (class, attempt) in BYPASSES {
            assert!(
                p.check(attempt).is_err(),
                "{class} bypass passed: {attempt:?} -> {:?}",
                p.check(attempt)
            );
            refused += 1;
        }
        let long = format!("ls {}", "a".repeat(MAX_COMMAND_LEN));
        assert!(p.check(&long).is_err(), "very long input");
        refused += 1;
        let deep = format!("ls {}", "'a'".repeat(4000) + ";x");
        assert!(p.check(&deep).is_err());
        refused += 1;
        assert!(refused >= 60, "only {refused} attempts");
    }

    #[test]
    fn refusals_should_name_the_construct() {
        let p = policy(&["ls"]);
        let why = p.check("ls; touch x").unwrap_err().to_string();
        assert!(why.contains("command separator"), "{why}");
        let why = p.check("ls | sh").unwrap_err().to_string();
        assert!(why.contains("pipe"), "{why}");
        let why = p.check("l''s").unwrap_err().to_string();
        assert!(why.contains("quoted or escaped"), "{why}");
        let why = p.check("PATH=/x ls").unwrap_err().to_string();
        assert!(why.contains("environment assignment"), "{why}");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::process::Command;

    /// What `sh` makes of `command`: the arguments a single `printf` receives.
    fn shell_words(command: &str) -> Vec<String> {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s\\0' {command}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "sh failed on {command:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        text.split_terminator('\0').map(str::to_string).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        /// Whatever the parser accepts reaches the shell as exactly the checked words, one
        /// command: had a separator or expansion slipped through, printf's arguments (or the
        /// output) would differ.
        #[test]
        fn accepted_commands_reach_the_shell_as_exactly_their_words(
            tail in proptest::collection::vec(
                prop_oneof![
                    "[a-z0-9._/=:,+@%-]{0,6}",
                    "'[^'\\x00]{0,6}'",
                    "\"[^\"\\\\$`!\\x00]{0,6}\"",
                    "[;&|<>$`(){}*?~#!^\\\\ \\t\\n'\"a-z]{1,4}",
                ],
                0..6,
            )
        ) {
            let command = format!("ls {}", tail.join(" "));
            let p = CommandPolicy::new(&["ls".to_string()]).unwrap();
            if let Ok(requoted) = p.check(&command) {
                let words = parse_words(&command).unwrap();
                let expected: Vec<String> = words.into_iter().map(|w| w.value).collect();
                prop_assert_eq!(shell_words(&requoted), expected);
            }
        }
    }
}
