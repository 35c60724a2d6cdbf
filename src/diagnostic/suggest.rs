//! Did you mean: the likely intended word for a misspelt key, name or value.

/// The closest candidate to `word`, if one is close enough to be a likely typo.
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(word, c), *c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let keys = ["steps", "sampler", "scheduler"];
        assert_eq!(did_you_mean("setps", &keys), Some("steps"));
        assert_eq!(did_you_mean("schedular", &keys), Some("scheduler"));
        assert_eq!(did_you_mean("banana", &keys), None);
    }
}
