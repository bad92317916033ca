//! Phone number patterns, as the taps' `numbers` and the receiver's stream
//! profiles' `calls` write them.

/// A number pattern: a glob (`*` any run, `?` one character; anchored at
/// both ends) or, prefixed with `re:`, a regular expression.
#[derive(Debug, Clone)]
pub struct Pattern {
    text: String,
    regex: regex::Regex,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, regex::Error> {
        let source = match text.strip_prefix("re:") {
            Some(re) => re.to_owned(),
            None => {
                let mut re = String::from("^");
                for c in text.chars() {
                    match c {
                        '*' => re.push_str(".*"),
                        '?' => re.push('.'),
                        c => re.push_str(&regex::escape(&c.to_string())),
                    }
                }
                re.push('$');
                re
            }
        };
        Ok(Pattern {
            text: text.to_owned(),
            regex: regex::Regex::new(&source)?,
        })
    }

    pub fn matches(&self, number: &str) -> bool {
        self.regex.is_match(number)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}
