//! Matrix localparts: validating them, deriving one from a DAARION username
//! or user id, numbered candidates for collisions, and the reserved names.
//!
//! Pure rules, no I/O. Cyrillic (Ukrainian and Russian) goes through the
//! Ukrainian national transliteration (KMU resolution No. 55 of 27.01.2010),
//! every other script through `deunicode`.

use std::fmt;

/// Synapse refuses user ids longer than this, counted in bytes of
/// `@{localpart}:{server_name}`.
const MAX_USER_ID_LEN: usize = 255;

/// Room that `derive` leaves for a collision suffix: `-99999`.
const SUFFIX_ROOM: usize = 6;

/// Used when neither the username nor the user id yields anything.
const FALLBACK: &str = "user";

/// The Matrix user id `@{localpart}:{server_name}`: the one place it is
/// written.
pub fn user_id(localpart: &str, server_name: &str) -> String {
    format!("@{localpart}:{server_name}")
}

/// A valid Matrix localpart (the part between '@' and ':'), lowercase,
/// only [a-z0-9._=\-/], not starting with '_', not all digits, non-empty.
///
/// Whether it also fits the 255-byte user id depends on the server name, so
/// that is checked by [`Localpart::parse`] and kept by [`Localpart::derive`]
/// and [`Localpart::candidate`], not by the type itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Localpart(String);

/// Why a string is not an acceptable localpart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalpartError {
    /// The string is empty.
    Empty,
    /// A character outside `a-z 0-9 . _ = - /` (upper case included).
    InvalidCharacter(char),
    /// Synapse reserves a leading '_' (application services use it).
    LeadingUnderscore,
    /// Synapse refuses all-digit localparts (they were guest accounts).
    AllDigits,
    /// The user id `@{localpart}:{server_name}` would exceed 255 bytes;
    /// `max` is the longest localpart that fits with this server name.
    TooLong {
        /// Longest localpart, in bytes, that fits with this server name.
        max: usize,
    },
}

impl fmt::Display for LocalpartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "The localpart is empty."),
            Self::InvalidCharacter(c) => write!(
                f,
                "The localpart contains {c:?}, but only a-z, 0-9 and . _ = - / are allowed."
            ),
            Self::LeadingUnderscore => write!(f, "The localpart must not start with '_'."),
            Self::AllDigits => write!(f, "The localpart must not consist of digits only."),
            Self::TooLong { max } => write!(
                f,
                "The localpart is too long: at most {max} bytes fit in a 255-byte user id on this server."
            ),
        }
    }
}

impl std::error::Error for LocalpartError {}

impl Localpart {
    /// Validate a string that must already be a localpart (e.g. read back from
    /// our DB or Synapse). `server_name` is used for the 255-byte limit of the
    /// whole user id `@{lp}:{server_name}`.
    ///
    /// '+' is refused although Synapse accepts it: the Matrix grammar does
    /// not have it and we never produce it.
    pub fn parse(s: &str, server_name: &str) -> Result<Localpart, LocalpartError> {
        if s.is_empty() {
            return Err(LocalpartError::Empty);
        }
        if let Some(c) = s.chars().find(|&c| !is_localpart_char(c)) {
            return Err(LocalpartError::InvalidCharacter(c));
        }
        if s.starts_with('_') {
            return Err(LocalpartError::LeadingUnderscore);
        }
        if is_all_digits(s) {
            return Err(LocalpartError::AllDigits);
        }
        let max = max_localpart_len(server_name);
        if s.len() > max {
            return Err(LocalpartError::TooLong { max });
        }
        Ok(Localpart(s.to_owned()))
    }

    /// The base candidate for a person: from `username` when it is Some and
    /// yields a non-empty result after folding, else from `user_id`
    /// (DAARION's stable id, e.g. "u_7f3c2a"), else the literal "user".
    /// Always returns a valid localpart that leaves room for a suffix of up
    /// to 6 bytes ("-99999") within the 255-byte user id limit for
    /// `server_name`.
    ///
    /// With a server name so long (over 241 bytes) that not even one
    /// character plus the suffix fits, the result keeps one character and
    /// is then too long for that server; no real server name is that long.
    pub fn derive(username: Option<&str>, user_id: &str, server_name: &str) -> Localpart {
        let names = Names {
            username,
            user_id,
            ..Names::default()
        };
        Localpart::choose(
            &[NameSource::Username, NameSource::UserId],
            &names,
            server_name,
        )
    }

    /// The base candidate from the first of `sources` that yields a
    /// non-empty name after folding (`LOCALPART_SOURCES`, CONTRACT.md
    /// section 10), else the literal "user"; the rest as [`Localpart::derive`].
    pub fn choose(sources: &[NameSource], names: &Names<'_>, server_name: &str) -> Localpart {
        let folded = sources
            .iter()
            .filter_map(|source| names.get(*source))
            .map(fold)
            .find(|s| !s.is_empty())
            .unwrap_or_else(|| FALLBACK.to_owned());
        let budget = max_localpart_len(server_name).saturating_sub(SUFFIX_ROOM);
        Localpart(fit(&folded, budget))
    }

    /// The n-th candidate: n <= 1 returns self unchanged; n >= 2 returns
    /// "{self}-{n}" (the base is shortened if needed so the user id stays
    /// within 255 bytes; never ends with a separator before the dash).
    pub fn candidate(&self, n: u32, server_name: &str) -> Localpart {
        if n <= 1 {
            return self.clone();
        }
        let suffix = format!("-{n}");
        let budget = max_localpart_len(server_name).saturating_sub(suffix.len());
        let base = if self.0.len() <= budget {
            self.0.clone()
        } else {
            shorten_base(&self.0, budget)
        };
        // Always contains '-', so never all digits; the base never starts
        // with '_' and keeps its first character, so neither does this.
        Localpart(base + &suffix)
    }

    /// The localpart as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The full Matrix user id: `@{lp}:{server_name}`.
    pub fn user_id(&self, server_name: &str) -> String {
        user_id(&self.0, server_name)
    }
}

/// Where a new account's localpart may come from (`LOCALPART_SOURCES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameSource {
    Username,
    DisplayName,
    /// The part of the address before '@'. Never a default: a Matrix id is
    /// public, an address is not.
    Email,
    UserId,
}

/// `username,display_name,user_id`: DAARION as it runs has no usernames,
/// so people are named after what they call themselves.
pub const DEFAULT_NAME_SOURCES: [NameSource; 3] = [
    NameSource::Username,
    NameSource::DisplayName,
    NameSource::UserId,
];

impl NameSource {
    /// A comma-separated list such as `username,display_name,user_id`.
    pub fn parse_list(list: &str) -> Result<Vec<NameSource>, String> {
        let mut sources = Vec::new();
        for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let source = match word {
                "username" => NameSource::Username,
                "display_name" => NameSource::DisplayName,
                "email" => NameSource::Email,
                "user_id" => NameSource::UserId,
                other => {
                    return Err(format!(
                        "{other:?} is not a name source (username, display_name, email, user_id)"
                    ))
                }
            };
            if !sources.contains(&source) {
                sources.push(source);
            }
        }
        if sources.is_empty() {
            return Err("at least one name source is needed".into());
        }
        Ok(sources)
    }
}

/// What is known of a person to name them by.
#[derive(Debug, Clone, Copy, Default)]
pub struct Names<'a> {
    pub username: Option<&'a str>,
    pub display_name: Option<&'a str>,
    pub email: Option<&'a str>,
    pub user_id: &'a str,
}

impl<'a> Names<'a> {
    fn get(&self, source: NameSource) -> Option<&'a str> {
        match source {
            NameSource::Username => self.username,
            NameSource::DisplayName => self.display_name,
            NameSource::Email => self
                .email
                .and_then(|e| e.rsplit_once('@').map(|(local, _)| local)),
            NameSource::UserId => Some(self.user_id),
        }
    }
}

/// `ADOPT_LOCALPART_TEMPLATE`: the localpart of an account DAARION Auth made
/// for a person before this service (`daarion_{user_id_hex8}`), to take
/// over instead of creating a second one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoptTemplate(String);

const PLACEHOLDERS: [&str; 2] = ["{user_id_hex8}", "{user_id}"];

impl AdoptTemplate {
    /// Placeholders `{user_id}` and `{user_id_hex8}`; the rest must be
    /// localpart characters.
    pub fn parse(template: &str) -> Result<AdoptTemplate, String> {
        let mut rest = template.to_string();
        let mut placeholders = 0;
        for p in PLACEHOLDERS {
            placeholders += rest.matches(p).count();
            rest = rest.replace(p, "");
        }
        if placeholders == 0 {
            return Err("it needs {user_id} or {user_id_hex8}".into());
        }
        if let Some(c) = rest.chars().find(|&c| !is_localpart_char(c)) {
            return Err(format!(
                "{c:?} is neither a placeholder nor allowed in a localpart"
            ));
        }
        Ok(AdoptTemplate(template.to_string()))
    }

    /// The localpart this template gives for `user_id`; None when the id
    /// does not fit it (`{user_id_hex8}` of an id without 8 leading hex
    /// digits) or the result is not a localpart.
    pub fn localpart(&self, user_id: &str, server_name: &str) -> Option<Localpart> {
        let mut out = self.0.clone();
        if out.contains("{user_id_hex8}") {
            let hex: String = user_id.chars().filter(|&c| c != '-').take(8).collect();
            if hex.len() != 8 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            out = out.replace("{user_id_hex8}", &hex.to_ascii_lowercase());
        }
        out = out.replace("{user_id}", &user_id.to_ascii_lowercase());
        Localpart::parse(&out, server_name).ok()
    }
}

impl fmt::Display for Localpart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// True when `lp` is in the reserved list (case-insensitive, exact match
/// after trimming entries). Only exact matches count: "admin" is reserved by
/// an entry "admin", "admin-2" and "admins" are not. Blank entries are ignored.
pub fn is_reserved(lp: &Localpart, reserved: &[String]) -> bool {
    reserved.iter().any(|entry| {
        let entry = entry.trim();
        !entry.is_empty() && entry.eq_ignore_ascii_case(lp.as_str())
    })
}

/// Default reserved localparts: operator, service and bot names that an
/// ordinary user must not be able to take, and words that chat clients give
/// a meaning of their own (@room, @everyone, @here).
pub const DEFAULT_RESERVED: &[&str] = &[
    // people who run the server
    "admin",
    "admins",
    "administrator",
    "administrators",
    "root",
    "sysadmin",
    "superuser",
    "operator",
    "owner",
    "staff",
    "team",
    "moderator",
    "moderators",
    "mod",
    "mods",
    // contact addresses people expect to be official
    "support",
    "help",
    "helpdesk",
    "info",
    "contact",
    "security",
    "abuse",
    "postmaster",
    "webmaster",
    "hostmaster",
    "noreply",
    "no-reply",
    "legal",
    "privacy",
    "official",
    // the software and the services
    "system",
    "server",
    "synapse",
    "matrix",
    "element",
    "notices",
    "server-notices",
    "server_notices",
    "servernotices",
    "bot",
    "bots",
    "bridge",
    "appservice",
    "mjolnir",
    "draupnir",
    "daarion",
    "daarion.city",
    "daarion-city",
    "matrix-provisioner",
    "provisioner",
    "api",
    "www",
    "mail",
    // mentions and placeholders with a meaning of their own
    "everyone",
    "all",
    "here",
    "channel",
    "room",
    "anonymous",
    "guest",
    "nobody",
    "null",
    "undefined",
];

/// Ukrainian national transliteration (Cabinet of Ministers of Ukraine
/// resolution No. 55 of 27 January 2010), applied to Ukrainian AND Russian
/// Cyrillic. Transliterated letters come out lower case; every other
/// character (Latin, digits, other Cyrillic letters such as Ў or Ђ) passes
/// through unchanged, except apostrophes next to a transliterated letter,
/// which the resolution drops.
///
/// Choices for letters the resolution does not cover (Russian only):
/// Ы → y (like И), Э → e, Ё → "yo" at the start of a word else "io" (the same
/// pattern as Ю/Я), Ъ dropped (like Ь). Russian Г, И, Е follow the Ukrainian
/// table, so "Выборг" → "vyborh".
pub fn transliterate_cyrillic(s: &str) -> String {
    let chars = precompose(s);
    let mut out = String::with_capacity(s.len());
    for (i, &c) in chars.iter().enumerate() {
        if is_apostrophe(c) {
            let prev_cyr = i > 0 && is_translit_letter(chars[i - 1]);
            let next_cyr = chars.get(i + 1).is_some_and(|&n| is_translit_letter(n));
            if !(prev_cyr || next_cyr) {
                out.push(c);
            }
            continue;
        }
        let lower = cyrillic_lower(c);
        let start = is_word_start(&chars, i);
        let text = match lower {
            'а' => "a",
            'б' => "b",
            'в' => "v",
            // "зг" is written "zgh" so that it is not read as the digraph "zh".
            'г' if i > 0 && cyrillic_lower(chars[i - 1]) == 'з' => "gh",
            'г' => "h",
            'ґ' => "g",
            'д' => "d",
            'е' => "e",
            'є' => pick(start, "ye", "ie"),
            'ж' => "zh",
            'з' => "z",
            'и' => "y",
            'і' => "i",
            'ї' => pick(start, "yi", "i"),
            'й' => pick(start, "y", "i"),
            'к' => "k",
            'л' => "l",
            'м' => "m",
            'н' => "n",
            'о' => "o",
            'п' => "p",
            'р' => "r",
            'с' => "s",
            'т' => "t",
            'у' => "u",
            'ф' => "f",
            'х' => "kh",
            'ц' => "ts",
            'ч' => "ch",
            'ш' => "sh",
            'щ' => "shch",
            'ь' | 'ъ' => "",
            'ю' => pick(start, "yu", "iu"),
            'я' => pick(start, "ya", "ia"),
            'ы' => "y",
            'э' => "e",
            'ё' => pick(start, "yo", "io"),
            _ => {
                out.push(c);
                continue;
            }
        };
        out.push_str(text);
    }
    out
}

fn pick(start: bool, at_start: &'static str, elsewhere: &'static str) -> &'static str {
    if start {
        at_start
    } else {
        elsewhere
    }
}

/// Letters of the Ukrainian and Russian alphabets, lowercased; anything else
/// is returned unchanged. `char::to_lowercase` would do too, but this keeps
/// the table closed: only these letters are transliterated here.
fn cyrillic_lower(c: char) -> char {
    match c {
        // А..Я map to а..я one to one.
        'А'..='Я' => char::from_u32(c as u32 + 0x20).unwrap_or(c),
        'Ё' => 'ё',
        'Є' => 'є',
        'І' => 'і',
        'Ї' => 'ї',
        'Ґ' => 'ґ',
        _ => c,
    }
}

fn is_translit_letter(c: char) -> bool {
    matches!(cyrillic_lower(c), 'а'..='я' | 'ё' | 'є' | 'і' | 'ї' | 'ґ')
}

/// ' ’ ʼ ` (and ‘): Ukrainian writes the apostrophe with any of them.
fn is_apostrophe(c: char) -> bool {
    matches!(c, '\'' | '’' | 'ʼ' | '`' | '‘')
}

/// A word starts where no letter precedes. Apostrophes are inside a word
/// ("Знам'янка" → "znamianka") and so are combining marks such as a stress
/// accent ("Марі́я" → "mariia"), so both are looked past.
fn is_word_start(chars: &[char], i: usize) -> bool {
    !chars[..i]
        .iter()
        .rev()
        .find(|&&c| !is_apostrophe(c) && !is_combining_mark(c))
        .is_some_and(|c| c.is_alphabetic())
}

/// The Combining Diacritical Marks block: what stress accents and
/// decomposed letters use in Cyrillic text.
fn is_combining_mark(c: char) -> bool {
    matches!(c, '\u{300}'..='\u{36F}')
}

/// Joins a base letter with a following combining breve or diaeresis
/// (decomposed input: И + ◌̆ → Й, І + ◌̈ → Ї, Е + ◌̈ → Ё), so the table sees
/// the letter the user typed.
fn precompose(s: &str) -> Vec<char> {
    let mut out: Vec<char> = Vec::with_capacity(s.len());
    for c in s.chars() {
        let joined = match (out.last(), c) {
            (Some('И'), '\u{306}') => Some('Й'),
            (Some('и'), '\u{306}') => Some('й'),
            (Some('І'), '\u{308}') => Some('Ї'),
            (Some('і'), '\u{308}') => Some('ї'),
            (Some('Е'), '\u{308}') => Some('Ё'),
            (Some('е'), '\u{308}') => Some('ё'),
            _ => None,
        };
        match joined {
            Some(j) => {
                out.pop();
                out.push(j);
            }
            None => out.push(c),
        }
    }
    out
}

/// A character Matrix allows in a user id's localpart.
pub fn is_localpart_char(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/')
}

/// Separators that `fold` keeps as typed. '/' is allowed by Matrix but not
/// kept: it has to be escaped in every client-server API path and makes
/// matrix.to links ugly, so it folds to '.' like any other punctuation.
fn is_separator(c: char) -> bool {
    matches!(c, '.' | '_' | '=' | '-' | '/')
}

fn is_all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn max_localpart_len(server_name: &str) -> usize {
    // "@" + localpart + ":" + server_name
    MAX_USER_ID_LEN.saturating_sub(2 + server_name.len())
}

/// Folds any text into `a-z 0-9 . _ = -`: Cyrillic by the national
/// transliteration, other scripts by `deunicode`, then lower case. Every
/// other character becomes a '.' separator; a run of separators keeps only
/// its first one; separators are trimmed at both ends (which also removes a
/// leading '_'); an all-digit result gets the prefix "u". May be empty.
fn fold(input: &str) -> String {
    let mut out = Folded::default();
    for c in transliterate_cyrillic(input).chars() {
        // Once well past any usable length the rest cannot matter.
        if out.0.len() > MAX_USER_ID_LEN {
            break;
        }
        if c.is_ascii() {
            out.push_ascii(c);
        } else {
            match deunicode::deunicode_char(c) {
                // Letters and digits of other scripts: "Zoë" → "zoe", "北京" → "bei jing".
                Some(ascii) if c.is_alphanumeric() => ascii.chars().for_each(|a| out.push_ascii(a)),
                // Combining marks, joiners, soft hyphen: invisible, they join.
                Some("") => {}
                // Emoji, symbols, punctuation, spaces: deunicode names them
                // ("🦄" → "unicorn"), but a name is not what the user wrote.
                _ => out.push_separator('.'),
            }
        }
    }
    let mut s = out.0;
    trim_trailing_separators(&mut s);
    if is_all_digits(&s) {
        s.insert(0, 'u');
    }
    s
}

/// The output of `fold` as it is built: never starts with a separator and
/// never has two in a row.
#[derive(Default)]
struct Folded(String);

impl Folded {
    fn push_ascii(&mut self, c: char) {
        match c {
            'a'..='z' | '0'..='9' => self.0.push(c),
            'A'..='Z' => self.0.push(c.to_ascii_lowercase()),
            // Inside a name, as in O'Brien or the Ukrainian apostrophe: dropped.
            '\'' | '`' => {}
            '.' | '_' | '=' | '-' => self.push_separator(c),
            _ => self.push_separator('.'),
        }
    }

    fn push_separator(&mut self, sep: char) {
        match self.0.chars().last() {
            // Leading separators are dropped (Synapse refuses a leading '_').
            None => {}
            // "._-" collapses to its first separator.
            Some(last) if is_separator(last) => {}
            Some(_) => self.0.push(sep),
        }
    }
}

fn trim_trailing_separators(s: &mut String) {
    let kept = s.trim_end_matches(is_separator).len();
    s.truncate(kept);
}

/// Cuts `s` to at most `max` bytes on a char boundary.
fn truncate_to(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Makes folded, non-empty text fit `max` bytes as a localpart: cut, re-trim
/// trailing separators, and keep it from becoming all digits. Keeps at
/// least one character even when `max` is 0.
fn fit(folded: &str, max: usize) -> String {
    let max = max.max(1);
    let mut s = truncate_to(folded, max).to_owned();
    trim_trailing_separators(&mut s);
    if s.is_empty() {
        // Cannot happen for fold output (it starts with a letter or digit),
        // kept so that no input can produce an empty localpart.
        s = FALLBACK.chars().take(max).collect();
    }
    if is_all_digits(&s) {
        // Cutting "12345abc" can leave "12345": make room for the 'u'.
        let digits = truncate_to(&s, max - 1).to_owned();
        s = format!("u{digits}");
    }
    s
}

/// Shortens a localpart used as the base of a numbered candidate to `max`
/// bytes, dropping separators left at the end so no "olena.-2" appears.
/// Keeps at least one character: its first one is never '_'.
fn shorten_base(base: &str, max: usize) -> String {
    let cut = truncate_to(base, max.max(1));
    let trimmed = cut.trim_end_matches(is_separator);
    if trimmed.is_empty() {
        cut.to_owned()
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "daarion.space";

    fn derive(username: &str) -> String {
        Localpart::derive(Some(username), "u_7f3c2a", SERVER).0
    }

    // ---- transliteration: the resolution's own examples -------------------

    #[test]
    fn kmu_2010_table_examples() {
        let cases = [
            ("Алушта", "alushta"),
            ("Андрій", "andrii"),
            ("Борщагівка", "borshchahivka"),
            ("Борисенко", "borysenko"),
            ("Вінниця", "vinnytsia"),
            ("Володимир", "volodymyr"),
            ("Гадяч", "hadiach"),
            ("Богдан", "bohdan"),
            ("Згурський", "zghurskyi"),
            ("Ґалаґан", "galagan"),
            ("Ґорґани", "gorgany"),
            ("Донецьк", "donetsk"),
            ("Дон", "don"),
            ("Рівне", "rivne"),
            ("Олег", "oleh"),
            ("Есмань", "esman"),
            ("Єнакієве", "yenakiieve"),
            ("Гаєвич", "haievych"),
            ("Короп'є", "koropie"),
            ("Житомир", "zhytomyr"),
            ("Жанна", "zhanna"),
            ("Жежелів", "zhezheliv"),
            ("Закарпаття", "zakarpattia"),
            ("Казимирчук", "kazymyrchuk"),
            ("Медвин", "medvyn"),
            ("Михайленко", "mykhailenko"),
            ("Іванків", "ivankiv"),
            ("Іващенко", "ivashchenko"),
            ("Їжакевич", "yizhakevych"),
            ("Кадиївка", "kadyivka"),
            ("Мар'їне", "marine"),
            ("Йосипівка", "yosypivka"),
            ("Стрий", "stryi"),
            ("Олексій", "oleksii"),
            ("Київ", "kyiv"),
            ("Коваленко", "kovalenko"),
            ("Лебедин", "lebedyn"),
            ("Леонід", "leonid"),
            ("Миколаїв", "mykolaiv"),
            ("Маринич", "marynych"),
            ("Ніжин", "nizhyn"),
            ("Наталія", "nataliia"),
            ("Одеса", "odesa"),
            ("Онищенко", "onyshchenko"),
            ("Полтава", "poltava"),
            ("Петро", "petro"),
            ("Решетилівка", "reshetylivka"),
            ("Рибчинський", "rybchynskyi"),
            ("Суми", "sumy"),
            ("Соломія", "solomiia"),
            ("Тернопіль", "ternopil"),
            ("Троць", "trots"),
            ("Ужгород", "uzhhorod"),
            ("Уляна", "uliana"),
            ("Фастів", "fastiv"),
            ("Філіпчук", "filipchuk"),
            ("Харків", "kharkiv"),
            ("Христина", "khrystyna"),
            ("Біла Церква", "bila tserkva"),
            ("Стеценко", "stetsenko"),
            ("Чернівці", "chernivtsi"),
            ("Шевченко", "shevchenko"),
            ("Шостка", "shostka"),
            ("Кишеньки", "kyshenky"),
            ("Щербухи", "shcherbukhy"),
            ("Гоща", "hoshcha"),
            ("Гаращенко", "harashchenko"),
            ("Юрій", "yurii"),
            ("Корюківка", "koriukivka"),
            ("Яготин", "yahotyn"),
            ("Ярошенко", "yaroshenko"),
            ("Костянтин", "kostiantyn"),
            ("Знам'янка", "znamianka"),
            ("Феодосія", "feodosiia"),
            ("Згорани", "zghorany"),
            ("Розгон", "rozghon"),
        ];
        for (input, want) in cases {
            assert_eq!(transliterate_cyrillic(input), want, "{input}");
        }
    }

    #[test]
    fn brief_examples_and_names() {
        let cases = [
            ("Дон", "don"),
            ("Тетерів", "teteriv"),
            ("Ромни", "romny"),
            ("Крюківка", "kriukivka"),
            ("Ічня", "ichnia"),
            ("Олена", "olena"),
            ("Щука", "shchuka"),
            ("Петренко", "petrenko"),
            ("Євген", "yevhen"),
            ("Сергій", "serhii"),
            ("Ольга", "olha"),
            ("Тетяна", "tetiana"),
            ("Андрій", "andrii"),
            ("В'ячеслав", "viacheslav"),
            ("Ігор", "ihor"),
            ("Юлія", "yuliia"),
            ("Марʼяна", "mariana"),
            ("Мар’яна", "mariana"),
            ("Мар`яна", "mariana"),
            ("Ярослав", "yaroslav"),
            ("Зґвалтування", "zgvaltuvannia"),
        ];
        for (input, want) in cases {
            assert_eq!(transliterate_cyrillic(input), want, "{input}");
        }
    }

    #[test]
    fn position_dependent_letters() {
        // Word start after space, hyphen, digit or string start.
        assert_eq!(transliterate_cyrillic("Єва Їжак"), "yeva yizhak");
        assert_eq!(transliterate_cyrillic("Анна-Юлія"), "anna-yuliia");
        assert_eq!(transliterate_cyrillic("1Яна"), "1yana");
        assert_eq!(transliterate_cyrillic("Йод, Яма"), "yod, yama");
        // Inside a word, also after Ь and apostrophe.
        assert_eq!(transliterate_cyrillic("Ьє"), "ie");
        assert_eq!(transliterate_cyrillic("п'ять"), "piat");
        // A leading apostrophe does not make the next letter word-internal.
        assert_eq!(transliterate_cyrillic("'Юрій"), "yurii");
        // Upper case "ЗГ" too.
        assert_eq!(transliterate_cyrillic("ЗГОРАНИ"), "zghorany");
        assert_eq!(transliterate_cyrillic("ЩУКА"), "shchuka");
    }

    #[test]
    fn russian_letters() {
        assert_eq!(transliterate_cyrillic("Наталья"), "natalia");
        assert_eq!(transliterate_cyrillic("Фёдор"), "fiodor");
        assert_eq!(transliterate_cyrillic("Ёлкин"), "yolkyn");
        assert_eq!(transliterate_cyrillic("Эдуард"), "eduard");
        assert_eq!(transliterate_cyrillic("Выборг"), "vyborh");
        assert_eq!(transliterate_cyrillic("Объём"), "obiom");
        assert_eq!(transliterate_cyrillic("Подъезд"), "podezd");
        assert_eq!(transliterate_cyrillic("Дмитрий"), "dmytryi");
    }

    #[test]
    fn decomposed_input_is_joined() {
        assert_eq!(transliterate_cyrillic("И\u{306}осип"), "yosyp");
        assert_eq!(transliterate_cyrillic("Стрии\u{306}"), "stryi");
        assert_eq!(transliterate_cyrillic("Киі\u{308}в"), "kyiv");
        assert_eq!(transliterate_cyrillic("Фе\u{308}дор"), "fiodor");
        // A stress accent does not start a new word.
        assert_eq!(transliterate_cyrillic("Марі\u{301}я"), "mari\u{301}ia");
    }

    #[test]
    fn non_cyrillic_passes_through() {
        assert_eq!(transliterate_cyrillic("O'Brien 42"), "O'Brien 42");
        assert_eq!(transliterate_cyrillic("Zoë 北京"), "Zoë 北京");
        // Belarusian Ў and Serbian Ђ are not in the table: left for deunicode.
        assert_eq!(transliterate_cyrillic("Ўђ"), "Ўђ");
        assert_eq!(transliterate_cyrillic(""), "");
        // Apostrophes next to Latin stay; next to Cyrillic they go.
        assert_eq!(transliterate_cyrillic("a'б"), "ab");
    }

    // ---- folding and derive ------------------------------------------------

    #[test]
    fn derive_examples() {
        let cases = [
            ("Олена Петренко", "olena.petrenko"),
            ("  --Mr. __Smith!! ", "mr.smith"),
            ("olena_p", "olena_p"),
            ("o-p", "o-p"),
            ("o=p", "o=p"),
            ("a._-b", "a.b"),
            ("a-_.b", "a-b"),
            ("olena@example.com", "olena.example.com"),
            ("12345", "u12345"),
            ("007", "u007"),
            ("Zoë", "zoe"),
            ("Łukasz", "lukasz"),
            ("北京", "bei.jing"),
            ("Ελληνικά", "ellenika"),
            // Latin "Bi" mixed into Cyrillic, as phone keyboards do.
            ("Biла Церква", "bila.tserkva"),
            ("Біла Церква", "bila.tserkva"),
            ("Jürgen Müller", "jurgen.muller"),
            ("O'Brien", "obrien"),
            ("a/b", "a.b"),
            ("a+b", "a.b"),
            ("_olena", "olena"),
            ("ОЛЕНА", "olena"),
            ("Оле\u{301}на", "olena"),
            ("Olena 🌻 Petrenko", "olena.petrenko"),
            ("Straße", "strasse"),
            ("Сергій 2000", "serhii.2000"),
            ("-=Олег=-", "oleh"),
            ("한국어", "hangugeo"),
            ("Ўладзімір", "uladzimir"),
        ];
        for (input, want) in cases {
            assert_eq!(derive(input), want, "{input:?}");
        }
    }

    #[test]
    fn names_come_from_the_first_usable_source() {
        let uuid = "7f3c2a1b-0000-4000-8000-00000000abcd";
        let names = Names {
            username: None,
            display_name: Some("Олена Петренко"),
            email: Some("O.Petrenko@Example.com"),
            user_id: uuid,
        };
        let choose = |sources: &str, names: &Names| {
            let sources = NameSource::parse_list(sources).unwrap();
            Localpart::choose(&sources, names, SERVER)
                .as_str()
                .to_string()
        };
        assert_eq!(
            NameSource::parse_list("username,display_name,user_id").unwrap(),
            DEFAULT_NAME_SOURCES
        );
        assert_eq!(
            choose("username,display_name,user_id", &names),
            "olena.petrenko"
        );
        assert_eq!(choose("email,user_id", &names), "o.petrenko");
        assert_eq!(choose("user_id", &names), uuid);
        // Unusable names are passed over.
        let emoji = Names {
            display_name: Some("🦄🌻"),
            email: Some("no-at-sign"),
            ..names
        };
        assert_eq!(choose("display_name,email,user_id", &emoji), uuid);
        assert_eq!(choose("display_name", &emoji), "user");
        for bad in ["", " , ", "username,nickname"] {
            assert!(NameSource::parse_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn adoption_templates_name_daarions_own_accounts() {
        let t = AdoptTemplate::parse("daarion_{user_id_hex8}").unwrap();
        let lp = |t: &AdoptTemplate, id: &str| t.localpart(id, SERVER).map(|l| l.to_string());
        assert_eq!(
            lp(&t, "7F3C2A1B-0000-4000-8000-00000000ABCD").as_deref(),
            Some("daarion_7f3c2a1b")
        );
        assert_eq!(lp(&t, "7f3c-2a1b-00").as_deref(), Some("daarion_7f3c2a1b"));
        assert_eq!(lp(&t, "u_7f3c2a"), None);
        assert_eq!(lp(&t, "7f3c2a"), None);
        let whole = AdoptTemplate::parse("old-{user_id}").unwrap();
        assert_eq!(lp(&whole, "u_7F3C").as_deref(), Some("old-u_7f3c"));
        assert_eq!(lp(&whole, "a b"), None);
        for bad in ["daarion_", "daarion {user_id}", "{user}", ""] {
            assert!(AdoptTemplate::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn derive_falls_back_to_user_id_then_user() {
        assert_eq!(
            Localpart::derive(Some("🦄🌻"), "u_7f3c2a", SERVER).as_str(),
            "u_7f3c2a"
        );
        assert_eq!(
            Localpart::derive(Some("!!!"), "u_7f3c2a", SERVER).as_str(),
            "u_7f3c2a"
        );
        assert_eq!(
            Localpart::derive(None, "u_7f3c2a", SERVER).as_str(),
            "u_7f3c2a"
        );
        assert_eq!(Localpart::derive(Some(""), "42", SERVER).as_str(), "u42");
        assert_eq!(Localpart::derive(None, "_", SERVER).as_str(), "user");
        assert_eq!(Localpart::derive(Some("   "), "", SERVER).as_str(), "user");
        assert_eq!(
            Localpart::derive(None, "7F3C2A1B-0000-4000-8000-00000000ABCD", SERVER).as_str(),
            "7f3c2a1b-0000-4000-8000-00000000abcd"
        );
    }

    #[test]
    fn derive_truncates_and_leaves_room_for_suffix() {
        let long = "Олена".repeat(100);
        let lp = Localpart::derive(Some(&long), "u_1", SERVER);
        assert_eq!(
            lp.user_id(SERVER).len() + SUFFIX_ROOM,
            MAX_USER_ID_LEN,
            "{lp}"
        );
        assert!(lp.as_str().starts_with("olenaolena"));

        // A separator left at the cut is trimmed.
        let server = "s".repeat(240); // room for 13, base gets 7
        assert_eq!(
            Localpart::derive(Some("abcdef gh"), "u", &server).as_str(),
            "abcdef"
        );
        // A cut that leaves only digits gets its 'u' within the budget.
        assert_eq!(
            Localpart::derive(Some("1234567abc"), "u", &server).as_str(),
            "u123456"
        );
        assert!(Localpart::parse("u123456-99999", &server).is_ok());
    }

    #[test]
    fn derive_survives_absurd_server_names() {
        for len in 240..=300 {
            let server = "x".repeat(len);
            let lp = Localpart::derive(Some("Олена"), "u_1", &server);
            assert!(!lp.as_str().is_empty());
            let _ = lp.candidate(u32::MAX, &server);
        }
    }

    // ---- parse -------------------------------------------------------------

    #[test]
    fn parse_accepts_valid() {
        for s in [
            "olena", "o.p", "a_b", "a=b", "a-b", "a/b", "u12345", "1a", "-", ".",
        ] {
            assert_eq!(Localpart::parse(s, SERVER).unwrap().as_str(), s);
        }
    }

    #[test]
    fn parse_rejects_each_rule() {
        assert_eq!(Localpart::parse("", SERVER), Err(LocalpartError::Empty));
        assert_eq!(
            Localpart::parse("Olena", SERVER),
            Err(LocalpartError::InvalidCharacter('O'))
        );
        assert_eq!(
            Localpart::parse("a+b", SERVER),
            Err(LocalpartError::InvalidCharacter('+'))
        );
        assert_eq!(
            Localpart::parse("оlena", SERVER),
            Err(LocalpartError::InvalidCharacter('о'))
        );
        assert_eq!(
            Localpart::parse("a b", SERVER),
            Err(LocalpartError::InvalidCharacter(' '))
        );
        assert_eq!(
            Localpart::parse("@a", SERVER),
            Err(LocalpartError::InvalidCharacter('@'))
        );
        assert_eq!(
            Localpart::parse("_bridge", SERVER),
            Err(LocalpartError::LeadingUnderscore)
        );
        assert_eq!(
            Localpart::parse("12345", SERVER),
            Err(LocalpartError::AllDigits)
        );
    }

    #[test]
    fn parse_length_limit_counts_whole_user_id() {
        let max = 255 - 2 - SERVER.len();
        assert!(Localpart::parse(&"a".repeat(max), SERVER).is_ok());
        assert_eq!(
            Localpart::parse(&"a".repeat(max + 1), SERVER),
            Err(LocalpartError::TooLong { max })
        );
        assert_eq!(
            Localpart::parse("a", &"s".repeat(300)),
            Err(LocalpartError::TooLong { max: 0 })
        );
    }

    #[test]
    fn errors_read_as_sentences() {
        let errors = [
            LocalpartError::Empty,
            LocalpartError::InvalidCharacter('+'),
            LocalpartError::LeadingUnderscore,
            LocalpartError::AllDigits,
            LocalpartError::TooLong { max: 240 },
        ];
        for e in errors {
            let msg = e.to_string();
            assert!(msg.starts_with(char::is_uppercase), "{msg}");
            assert!(msg.ends_with('.'), "{msg}");
            let _: &dyn std::error::Error = &e;
        }
        assert!(LocalpartError::InvalidCharacter('+')
            .to_string()
            .contains("'+'"));
        assert!(LocalpartError::TooLong { max: 240 }
            .to_string()
            .contains("240"));
    }

    // ---- candidate, user_id, Display ---------------------------------------

    #[test]
    fn candidate_numbering() {
        let lp = Localpart::parse("olena", SERVER).unwrap();
        assert_eq!(lp.candidate(0, SERVER), lp);
        assert_eq!(lp.candidate(1, SERVER), lp);
        assert_eq!(lp.candidate(2, SERVER).as_str(), "olena-2");
        assert_eq!(lp.candidate(99999, SERVER).as_str(), "olena-99999");
    }

    #[test]
    fn candidate_shortens_base_without_trailing_separator() {
        let server = "s".repeat(240); // localparts up to 13 bytes
        let lp = Localpart::parse("olena.petrenk", &server).unwrap();
        assert_eq!(lp.candidate(2, &server).as_str(), "olena.petre-2");
        assert_eq!(lp.candidate(12345, &server).as_str(), "olena.p-12345");
        assert_eq!(lp.candidate(123456, &server).as_str(), "olena-123456");
        let lp = Localpart::parse("ab.defghijklm", &server).unwrap();
        assert_eq!(lp.candidate(123456789, &server).as_str(), "ab-123456789");
        // Only separators after the cut: keep them rather than lose the base.
        let lp = Localpart::parse("a...........b", &server).unwrap();
        assert_eq!(lp.candidate(12345, &server).as_str(), "a-12345");
        let lp = Localpart::parse("-............", &server).unwrap();
        assert_eq!(lp.candidate(12345, &server).as_str(), "-......-12345");
    }

    #[test]
    fn user_id_and_display() {
        let lp = Localpart::parse("olena", SERVER).unwrap();
        assert_eq!(lp.user_id(SERVER), "@olena:daarion.space");
        assert_eq!(lp.to_string(), "olena");
        assert_eq!(lp.as_str(), "olena");
    }

    // ---- reserved ----------------------------------------------------------

    #[test]
    fn reserved_matches_exactly_ignoring_case_and_spaces() {
        let reserved: Vec<String> = vec![" Admin ".into(), "".into(), "support".into()];
        let lp = |s: &str| Localpart::parse(s, SERVER).unwrap();
        assert!(is_reserved(&lp("admin"), &reserved));
        assert!(is_reserved(&lp("support"), &reserved));
        assert!(!is_reserved(&lp("admin-2"), &reserved));
        assert!(!is_reserved(&lp("admins"), &reserved));
        assert!(!is_reserved(&lp("olena"), &reserved));
        assert!(!is_reserved(&lp("olena"), &[]));
    }

    #[test]
    fn default_reserved_entries_are_valid_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for entry in DEFAULT_RESERVED {
            assert!(Localpart::parse(entry, SERVER).is_ok(), "{entry}");
            assert!(seen.insert(entry), "duplicate {entry}");
        }
        let defaults: Vec<String> = DEFAULT_RESERVED.iter().map(|s| s.to_string()).collect();
        for name in [
            "admin",
            "root",
            "room",
            "everyone",
            "here",
            "matrix-provisioner",
            "daarion",
        ] {
            let lp = Localpart::derive(Some(name), "u_1", SERVER);
            assert!(is_reserved(&lp, &defaults), "{name}");
        }
    }

    // ---- properties over many generated inputs -----------------------------

    /// Small deterministic generator (xorshift); no external crates.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn pieces() -> Vec<String> {
        let mut pieces: Vec<String> = [
            "Олена",
            "Щука",
            "Згорани",
            "В'ячеслав",
            "Марʼяна",
            "Їжак",
            "Єва",
            "Фёдор",
            "Ъ",
            "Ь",
            "ЁЭЫ",
            "Zoë",
            "Łukasz",
            "北京",
            "日本語",
            "한국어",
            "مرحبا",
            "שלום",
            "Ελληνικά",
            "हिन्दी",
            "ไทย",
            "🦄",
            "🇺🇦",
            "👩‍👩‍👧",
            "\u{301}",
            "\u{306}",
            "\u{200B}",
            "\u{FEFF}",
            "\u{AD}",
            " ",
            "\t",
            "\n",
            "\u{3000}",
            ".",
            "_",
            "-",
            "=",
            "/",
            "+",
            "@",
            ":",
            "'",
            "`",
            "’",
            "!",
            "?",
            "%",
            "\\",
            "\"",
            "\0",
            "0",
            "7",
            "12345",
            "²",
            "½",
            "Ⅻ",
            "ﬁ",
            "ß",
            "İ",
            "a",
            "Z",
            "_bot",
            "--",
            "._-",
            "olena",
            "\u{10FFFF}",
            "\u{E000}",
            "\u{FFFD}",
            "ǅ",
            "ⓐ",
            "ｆｕｌｌ",
            "Марі\u{301}я",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        pieces.extend([
            "x".repeat(40),
            "9".repeat(300),
            "Щ".repeat(70),
            "Є ".repeat(90),
        ]);
        pieces
    }

    fn random_input(rng: &mut Rng, pieces: &[String]) -> String {
        let n = rng.below(6);
        (0..n)
            .map(|_| pieces[rng.below(pieces.len())].as_str())
            .collect()
    }

    #[test]
    fn derive_and_candidates_always_parse() {
        let servers = [
            "daarion.space".to_owned(),
            "matrix.daarion.city:8448".to_owned(),
            "s".repeat(200),
            format!("{}.example", "a".repeat(232)), // 240 bytes
        ];
        let pieces = pieces();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..800 {
            let username = random_input(&mut rng, &pieces);
            let user_id = random_input(&mut rng, &pieces);
            let username = (round % 7 != 0).then_some(username.as_str());
            for server in &servers {
                let lp = Localpart::derive(username, &user_id, server);
                let parsed = Localpart::parse(lp.as_str(), server);
                assert_eq!(
                    parsed.as_ref(),
                    Ok(&lp),
                    "{username:?} {user_id:?} {}",
                    server.len()
                );
                assert!(lp.user_id(server).len() + SUFFIX_ROOM <= MAX_USER_ID_LEN);
                assert!(!lp.as_str().contains(['/', '+']));
                let last = lp.as_str().chars().last().unwrap();
                assert!(last.is_ascii_alphanumeric(), "{lp}");
                for n in [0, 1, 2, 3, 10, 99, 999, 9999, 99999, 100_000, u32::MAX] {
                    let c = lp.candidate(n, server);
                    assert_eq!(
                        Localpart::parse(c.as_str(), server).as_ref(),
                        Ok(&c),
                        "{lp} {n}"
                    );
                    if n >= 2 {
                        assert!(c.as_str().ends_with(&format!("-{n}")));
                        assert!(!c
                            .as_str()
                            .trim_end_matches(&format!("-{n}"))
                            .ends_with(is_separator));
                    }
                    if (2..=99_999).contains(&n) {
                        // The room left by derive: the base is kept whole.
                        assert_eq!(c.as_str(), format!("{lp}-{n}"));
                    }
                }
            }
        }
    }

    /// A derived localpart is its own derivation: a username that already
    /// is a valid localpart is kept as it is, so the name a person asked
    /// for is the name they get, and a stored localpart can be traced back
    /// to the username it came from (see `split_suffix` in the worker).
    #[test]
    fn derived_localparts_derive_to_themselves() {
        let pieces = pieces();
        let mut rng = Rng(42);
        for _ in 0..2000 {
            let input = random_input(&mut rng, &pieces);
            for server in ["daarion.space".to_owned(), "s".repeat(200)] {
                let lp = Localpart::derive(Some(&input), "u_1", &server);
                let again = Localpart::derive(Some(lp.as_str()), "u_2", &server);
                assert_eq!(again, lp, "{input:?}");
            }
        }
    }
}
