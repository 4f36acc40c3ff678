//! Cross-border transfer policy: may a record's personal data move from one office to another?
//!
//! Replicating a record to an office in another jurisdiction is itself a transfer of personal data
//! (DESIGN.md 8). The decision is a pure function of the sending and receiving jurisdictions, the
//! record's origin, and this table. The default table follows the privacy statement (§5): data
//! leaves the EEA only under a transfer mechanism (adequacy, standard contractual clauses,
//! binding corporate rules, a derogation, or the destination's own instrument), with a transfer
//! impact assessment where one is needed; group companies share data under their intra-group
//! agreement (§4.4). Data that originates in a *resident* jurisdiction (China by default, PIPL
//! localisation) never leaves it. A pair the table does not name is forbidden: a transfer nobody
//! decided on is not made.

use std::collections::BTreeMap;

/// EEA member states (EU 27 plus Iceland, Liechtenstein, Norway): data leaving them needs a
/// transfer mechanism (§5). The policy's area `EEA` is these; it was the EU 27 alone, while the
/// audit report's EEA held all 30 (found by an exploratory session).
pub const EEA: &[&str] = &[
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV",
    "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE", "IS", "LI", "NO",
];
use serde::{Deserialize, Serialize};

/// Most rules in a configured policy.
pub const POLICY_RULES_MAX: usize = 1024;
/// Most transfer impact assessments named in a config.
pub const ASSESSMENTS_MAX: usize = 1024;
/// Longest reference of one assessment, in bytes.
pub const ASSESSMENT_REF_BYTES_MAX: usize = 200;

/// One row: data may move `from` → `to` under `mechanism` (`forbidden` refuses it).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// A jurisdiction code, `EEA` (the EU member states, Iceland, Liechtenstein, Norway) or `*`.
    pub from: String,
    pub to: String,
    /// A transfer mechanism from the vocabulary, or `forbidden`.
    pub mechanism: String,
    /// Whether a transfer impact assessment is needed.
    #[serde(default)]
    pub tia: bool,
}

/// `[transfer]` in the office config.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct TransferConfig {
    /// Jurisdictions whose records' personal data never leaves them.
    #[serde(default = "default_resident")]
    pub resident: Vec<String>,
    /// Rules checked before the built-in table.
    #[serde(default, rename = "rule", skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<PolicyRule>,
    /// The transfer impact assessments on file, by destination area (`US`, `US-CA`, `EEA` or
    /// `*`): the reference replication records with every transfer whose rule needs one.
    /// Without it such a transfer is still made (policy allows it), recorded without a TIA, and
    /// `audit report` counts it as one lacking its assessment, as it is.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub assessments: BTreeMap<String, String>,
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            resident: default_resident(),
            rules: Vec::new(),
            assessments: BTreeMap::new(),
        }
    }
}

fn default_resident() -> Vec<String> {
    vec!["CN".into()]
}

/// The decision for one record and one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Same jurisdiction: not a cross-border transfer.
    Domestic,
    /// The record holds no personal data (e.g. a transfer event naming only a record id).
    NoPersonalData,
    Allowed {
        mechanism: String,
        tia_required: bool,
        /// The reference of the assessment on file for the destination (`[transfer.assessments]`),
        /// when one is required.
        assessment: Option<String>,
    },
    Forbidden {
        reason: String,
    },
}

impl Verdict {
    pub fn may_send(&self) -> bool {
        !matches!(self, Verdict::Forbidden { .. })
    }
}

/// The policy in force: configured rules first, then the built-in table.
#[derive(Debug, Clone)]
pub struct TransferPolicy {
    rules: Vec<PolicyRule>,
    resident: Vec<String>,
    assessments: BTreeMap<String, String>,
}

/// The built-in table (privacy statement §4.4, §5).
fn builtin_rules() -> Vec<PolicyRule> {
    let r = |from: &str, to: &str, mechanism: &str, tia: bool| PolicyRule {
        from: from.into(),
        to: to.into(),
        mechanism: mechanism.into(),
        tia,
    };
    vec![
        // Inside the EEA personal data moves freely.
        r("EEA", "EEA", "none_required", false),
        // Mutual adequacy: Commission Decision 2021/1772; UK adequacy regulations for the EEA.
        r("EEA", "GB", "adequacy", false),
        r("GB", "EEA", "adequacy", false),
        // Elsewhere from the EEA or the UK: standard contractual clauses (the UK's IDTA/addendum)
        // with a transfer impact assessment.
        r("EEA", "*", "scc", true),
        r("GB", "*", "scc", true),
        // China: the CAC standard contract (PIPL art. 38), for data that is not localised.
        r("CN", "*", "cn_standard_contract", true),
        // Other offices share with group companies under the intra-group agreement (§4.4).
        r("*", "*", "bcr", false),
    ]
}

fn area_matches(area: &str, code: &str) -> bool {
    area == "*" || area == code || (area == "EEA" && EEA.contains(&code))
}

/// A rule's area: `*`, `EEA`, or a jurisdiction whose country is an assigned ISO 3166-1 code
/// (`DEU` and `ZZ` were taken by `consentd check-config`; found by an exploratory session).
fn is_area(area: &str) -> bool {
    if area == "*" || area == "EEA" {
        return true;
    }
    let country = area.split('-').next().unwrap_or("");
    area.len() <= 8
        && country.len() == 2
        && crate::vocab::COUNTRIES.binary_search(&country).is_ok()
        && area
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-')
}

impl TransferPolicy {
    pub fn builtin() -> TransferPolicy {
        TransferPolicy::from_config(&TransferConfig::default()).expect("built-in policy is valid")
    }

    pub fn from_config(config: &TransferConfig) -> Result<TransferPolicy, String> {
        if config.rules.len() > POLICY_RULES_MAX {
            return Err(format!("transfer: more than {POLICY_RULES_MAX} rules"));
        }
        for rule in &config.rules {
            if rule.mechanism != "forbidden" {
                crate::vocab::check(
                    "transfer mechanism",
                    &rule.mechanism,
                    crate::vocab::MECHANISMS,
                )
                .map_err(|e| {
                    format!(
                        "transfer.rule {}→{}: {e} (or forbidden)",
                        rule.from, rule.to
                    )
                })?;
            }
            for area in [&rule.from, &rule.to] {
                if !is_area(area) {
                    return Err(format!(
                        "transfer.rule {}→{}: {area:?} is not `*`, `EEA` or an ISO 3166 code such as DE or US-CA",
                        rule.from, rule.to
                    ));
                }
            }
        }
        for r in &config.resident {
            if !is_area(r) || r == "*" || r == "EEA" {
                return Err(format!(
                    "transfer.resident: {r:?} is not an ISO 3166 country code such as CN"
                ));
            }
        }
        if config.assessments.len() > ASSESSMENTS_MAX {
            return Err(format!(
                "transfer.assessments: more than {ASSESSMENTS_MAX} entries"
            ));
        }
        for (area, reference) in &config.assessments {
            if !is_area(area) {
                return Err(format!(
                    "transfer.assessments: {area:?} is not `*`, `EEA` or an ISO 3166 code such as US or US-CA"
                ));
            }
            let printable = !reference.chars().any(crate::office::unprintable);
            if reference.trim().is_empty()
                || reference.len() > ASSESSMENT_REF_BYTES_MAX
                || !printable
            {
                return Err(format!(
                    "transfer.assessments.{area}: the reference must be 1 to {ASSESSMENT_REF_BYTES_MAX} bytes of printable text, such as \"TIA-2026-07\""
                ));
            }
        }
        let mut rules = config.rules.clone();
        rules.extend(builtin_rules());
        Ok(TransferPolicy {
            rules,
            resident: config.resident.clone(),
            assessments: config.assessments.clone(),
        })
    }

    /// Whether personal data originating in `jurisdiction` stays there (`[transfer] resident`).
    pub fn is_resident(&self, jurisdiction: &str) -> bool {
        self.resident.iter().any(|r| r == jurisdiction)
    }

    /// The assessment on file for transfers to `to`: the most specific area that names it
    /// (the jurisdiction, its country, `EEA`, then `*`).
    fn assessment_for(&self, to: &str) -> Option<String> {
        let country = to.split('-').next().unwrap_or(to);
        let eea = EEA.contains(&country).then_some("EEA");
        [Some(to), Some(country), eea, Some("*")]
            .into_iter()
            .flatten()
            .find_map(|area| self.assessments.get(area))
            .cloned()
    }

    /// The offices in `peers` (office, jurisdiction) that this office's own records reach under
    /// a rule needing a transfer impact assessment none is named for: (office, jurisdiction,
    /// mechanism). Start-up and `consentd check-config` warn of them.
    pub fn missing_assessments<'a>(
        &self,
        own: &str,
        peers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Vec<(String, String, String)> {
        peers
            .into_iter()
            .filter_map(|(office, to)| match self.decide(own, own, to, true) {
                Verdict::Allowed {
                    mechanism,
                    tia_required: true,
                    assessment: None,
                } => Some((office.to_string(), to.to_string(), mechanism)),
                _ => None,
            })
            .collect()
    }

    /// May personal data that originated in `origin` move from an office in `from` to one in `to`?
    ///
    /// An onward transfer (data that came from `origin` to `from` and goes on to `to`) must also
    /// be one `origin` may make itself: with DE→US forbidden, a DE record reached us through uk
    /// (DE→GB adequacy, GB→US SCCs), its signed trail naming only the last hop (found by an
    /// exploratory session). GDPR Art. 44: onward transfers keep the original protection.
    pub fn decide(&self, origin: &str, from: &str, to: &str, personal_data: bool) -> Verdict {
        if !personal_data {
            return Verdict::NoPersonalData;
        }
        if self.is_resident(origin) && to != origin {
            return Verdict::Forbidden {
                reason: format!(
                    "personal data originating in {origin} stays there (data localisation, [transfer] resident)"
                ),
            };
        }
        if from == to {
            return Verdict::Domestic;
        }
        if origin != from && origin != to {
            if let Verdict::Forbidden { reason } = self.hop(origin, to) {
                return Verdict::Forbidden {
                    reason: format!(
                        "onward transfer of personal data originating in {origin}: {reason}"
                    ),
                };
            }
        }
        self.hop(from, to)
    }

    /// Checks a transfer an operator records from `from` to `to` under `mechanism` against the
    /// table (not the residency rule, which is about what replication sends: a transfer out of
    /// China under its security assessment is the operator's to record). Refused: a move the
    /// table forbids; `none_required` where the table needs a mechanism (it is for moves inside
    /// one legal area); China's instruments for data not leaving China. Any other mechanism is
    /// the operator's legal judgement (an adequacy decision the table does not know, a
    /// derogation). Each of these was recorded without a word, and the audit report did not
    /// flag the move (found by an exploratory session).
    pub fn check_recorded(&self, from: &str, to: &str, mechanism: &str) -> Result<(), String> {
        let country = |j: &str| j.split('-').next().unwrap_or(j).to_string();
        if mechanism.starts_with("cn_") && (country(from) != "CN" || country(to) == "CN") {
            return Err(format!(
                "{mechanism} is one of China's instruments for personal data leaving China (PIPL art. 38); this move is {from}→{to}"
            ));
        }
        if country(from) == country(to) {
            return Ok(());
        }
        match self.hop(from, to) {
            Verdict::Forbidden { reason } => Err(format!(
                "{reason}: not recorded; if the move is lawful, the office's [transfer] rules must say so first"
            )),
            Verdict::Allowed {
                mechanism: needed, ..
            } if mechanism == "none_required" && needed != "none_required" => Err(format!(
                "none_required is for moves inside one legal area; {from}→{to} needs a mechanism (the transfer policy names {needed})"
            )),
            _ => Ok(()),
        }
    }

    /// The verdict of the first rule for `from`→`to` (no rule: forbidden).
    fn hop(&self, from: &str, to: &str) -> Verdict {
        match self
            .rules
            .iter()
            .find(|r| area_matches(&r.from, from) && area_matches(&r.to, to))
        {
            Some(r) if r.mechanism == "forbidden" => Verdict::Forbidden {
                reason: format!("transfers {from}→{to} are forbidden by policy"),
            },
            Some(r) => Verdict::Allowed {
                mechanism: r.mechanism.clone(),
                tia_required: r.tia,
                assessment: if r.tia { self.assessment_for(to) } else { None },
            },
            None => Verdict::Forbidden {
                reason: format!("no transfer mechanism is configured for {from}→{to}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(m: &str, tia: bool) -> Verdict {
        Verdict::Allowed {
            mechanism: m.into(),
            tia_required: tia,
            assessment: None,
        }
    }

    #[test]
    fn recorded_transfers_are_checked_against_the_table() {
        let p = TransferPolicy::builtin();
        assert_eq!(p.check_recorded("DE", "US", "scc"), Ok(()));
        assert_eq!(p.check_recorded("DE", "NL", "none_required"), Ok(()));
        assert_eq!(p.check_recorded("US", "US-CA", "none_required"), Ok(()));
        let e = p.check_recorded("DE", "US", "none_required").unwrap_err();
        assert!(e.contains("names scc"), "{e}");
        let e = p.check_recorded("GB", "US", "none_required").unwrap_err();
        assert!(e.contains("inside one legal area"), "{e}");
        let e = p
            .check_recorded("DE", "CN", "cn_standard_contract")
            .unwrap_err();
        assert!(e.contains("leaving China"), "{e}");
        assert_eq!(
            p.check_recorded("CN", "DE", "cn_security_assessment"),
            Ok(())
        );
        let e = p
            .check_recorded("CN", "CN", "cn_standard_contract")
            .unwrap_err();
        assert!(e.contains("leaving China"), "{e}");
        // The operator's judgement: another mechanism than the table's.
        assert_eq!(p.check_recorded("DE", "JP", "adequacy"), Ok(()));
        let strict = TransferPolicy::from_config(&TransferConfig {
            rules: vec![PolicyRule {
                from: "DE".into(),
                to: "IN".into(),
                mechanism: "forbidden".into(),
                tia: false,
            }],
            ..TransferConfig::default()
        })
        .unwrap();
        let e = strict.check_recorded("DE", "IN", "scc").unwrap_err();
        assert!(e.contains("forbidden by policy"), "{e}");
    }

    #[test]
    fn the_builtin_table_follows_the_statement() {
        let p = TransferPolicy::builtin();
        assert_eq!(
            p.decide("DE", "DE", "NL", true),
            allowed("none_required", false)
        );
        assert_eq!(p.decide("DE", "DE", "GB", true), allowed("adequacy", false));
        assert_eq!(p.decide("GB", "GB", "NL", true), allowed("adequacy", false));
        assert_eq!(p.decide("DE", "DE", "US", true), allowed("scc", true));
        assert_eq!(p.decide("NL", "NL", "SG", true), allowed("scc", true));
        assert_eq!(p.decide("SG", "SG", "AU", true), allowed("bcr", false));
        assert_eq!(p.decide("US", "US", "US", true), Verdict::Domestic);
        assert_eq!(p.decide("US", "US", "CO", false), Verdict::NoPersonalData);
        // Norway, Iceland and Liechtenstein are in the EEA (they were "elsewhere").
        assert_eq!(
            p.decide("DE", "DE", "NO", true),
            allowed("none_required", false)
        );
        assert_eq!(p.decide("NO", "NO", "US", true), allowed("scc", true));
        assert_eq!(p.decide("IS", "IS", "GB", true), allowed("adequacy", false));
    }

    #[test]
    fn chinese_data_stays_in_china_by_default() {
        let p = TransferPolicy::builtin();
        assert!(!p.decide("CN", "CN", "SG", true).may_send());
        // Relayed through another office, it still may not go further.
        assert!(!p.decide("CN", "SG", "AU", true).may_send());
        assert!(
            p.decide("CN", "CN", "SG", false).may_send(),
            "no personal data, no transfer"
        );
        let open = TransferPolicy::from_config(&TransferConfig {
            resident: vec![],
            ..TransferConfig::default()
        })
        .unwrap();
        assert_eq!(
            open.decide("CN", "CN", "SG", true),
            allowed("cn_standard_contract", true)
        );
    }

    #[test]
    fn configured_rules_come_first_and_are_checked() {
        let cfg = TransferConfig {
            resident: vec!["CN".into()],
            rules: vec![
                PolicyRule {
                    from: "DE".into(),
                    to: "US".into(),
                    mechanism: "adequacy".into(),
                    tia: false,
                },
                PolicyRule {
                    from: "*".into(),
                    to: "CO".into(),
                    mechanism: "forbidden".into(),
                    tia: false,
                },
            ],
            ..TransferConfig::default()
        };
        let p = TransferPolicy::from_config(&cfg).unwrap();
        assert_eq!(p.decide("DE", "DE", "US", true), allowed("adequacy", false));
        assert!(!p.decide("SG", "SG", "CO", true).may_send());
        // Onward: SG data relayed by a DE office may not reach CO, which SG may not send to;
        // DE data relayed by an SG office goes on under the hop's own mechanism.
        assert!(
            !p.decide("SG", "DE", "CO", true).may_send(),
            "relayed to CO"
        );
        assert!(p.decide("DE", "SG", "US", true).may_send());
        assert!(p.decide("SG", "DE", "SG", true).may_send(), "back home");
        let bad = TransferConfig {
            resident: vec![],
            rules: vec![PolicyRule {
                from: "DE".into(),
                to: "US".into(),
                mechanism: "handshake".into(),
                tia: false,
            }],
            ..TransferConfig::default()
        };
        assert!(TransferPolicy::from_config(&bad).is_err());
        for (from, to) in [("DEU", "US"), ("DE", "ZZ"), ("", "US")] {
            let bad = TransferConfig {
                resident: vec![],
                rules: vec![PolicyRule {
                    from: from.into(),
                    to: to.into(),
                    mechanism: "scc".into(),
                    tia: false,
                }],
                ..TransferConfig::default()
            };
            assert!(TransferPolicy::from_config(&bad).is_err(), "{from}→{to}");
        }
        let bad = TransferConfig {
            resident: vec!["XX".into()],
            ..TransferConfig::default()
        };
        assert!(TransferPolicy::from_config(&bad).is_err(), "resident XX");
    }

    #[test]
    fn assessments_name_the_most_specific_destination_and_are_checked() {
        let cfg = |pairs: &[(&str, &str)]| TransferConfig {
            assessments: pairs
                .iter()
                .map(|(a, r)| (a.to_string(), r.to_string()))
                .collect(),
            ..TransferConfig::default()
        };
        let p = TransferPolicy::from_config(&cfg(&[
            ("US", "TIA-US"),
            ("US-CA", "TIA-CA"),
            ("*", "TIA-ANY"),
        ]))
        .unwrap();
        let with = |m: &str, r: Option<&str>| Verdict::Allowed {
            mechanism: m.into(),
            tia_required: true,
            assessment: r.map(String::from),
        };
        assert_eq!(
            p.decide("DE", "DE", "US", true),
            with("scc", Some("TIA-US"))
        );
        assert_eq!(
            p.decide("DE", "DE", "US-CA", true),
            with("scc", Some("TIA-CA"))
        );
        assert_eq!(
            p.decide("DE", "DE", "US-NY", true),
            with("scc", Some("TIA-US"))
        );
        assert_eq!(
            p.decide("GB", "GB", "SG", true),
            with("scc", Some("TIA-ANY"))
        );
        // No assessment where the rule needs none.
        assert_eq!(p.decide("SG", "SG", "US", true), allowed("bcr", false));
        assert_eq!(p.decide("DE", "DE", "GB", true), allowed("adequacy", false));

        let p = TransferPolicy::from_config(&cfg(&[("US", "TIA-US")])).unwrap();
        let peers = [("us", "US"), ("sg", "SG"), ("uk", "GB"), ("nl", "NL")];
        assert_eq!(
            p.missing_assessments("DE", peers),
            vec![("sg".to_string(), "SG".to_string(), "scc".to_string())]
        );
        assert!(
            p.missing_assessments("US", peers).is_empty(),
            "bcr needs none"
        );

        for bad in [
            cfg(&[("USA", "TIA")]),
            cfg(&[("US", "")]),
            cfg(&[("US", "  ")]),
            cfg(&[("US", "TIA\nforged")]),
            cfg(&[("US", &"x".repeat(ASSESSMENT_REF_BYTES_MAX + 1))]),
        ] {
            assert!(TransferPolicy::from_config(&bad).is_err(), "{bad:?}");
        }
    }
}
