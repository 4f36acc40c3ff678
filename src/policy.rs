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

/// Destinations the European Commission has found adequate (GDPR Art. 45), decisions in force:
/// Andorra (2010/625/EU), Argentina (2003/490/EC), Canada (2002/2/EC: commercial organisations
/// under PIPEDA only), Faroe Islands (2010/146/EU), Guernsey (2003/821/EC), Israel
/// (2011/61/EU), Isle of Man (2004/411/EC), Japan (2019/419), Jersey (2008/393/EC), New Zealand
/// (2013/65/EU), Republic of Korea (2022/254), Switzerland (2000/518/EC), United Kingdom
/// (2021/1772, as extended), United States (2023/1795, the EU-US Data Privacy Framework: only
/// organisations certified under it, which the product cannot check), Uruguay (2012/484/EU).
/// Moves inside the EEA need none.
pub const EU_ADEQUATE: &[&str] = &[
    "AD", "AR", "CA", "FO", "GG", "IL", "IM", "JP", "JE", "NZ", "KR", "CH", "GB", "US", "UY",
];

/// Destinations the UK's adequacy regulations cover (UK GDPR Art. 45, Data Protection Act 2018
/// s. 17A and Sch. 21 para. 4-5): the EEA states and Gibraltar, the EU's decisions the UK kept
/// (Andorra, Argentina, Canada, Faroe Islands, Guernsey, Israel, Isle of Man, Japan, Jersey, New
/// Zealand, Switzerland, Uruguay), the Republic of Korea (the Data Protection (Adequacy)
/// (Republic of Korea) Regulations 2022) and the United States (the Data Protection (Adequacy)
/// (United States of America) Regulations 2023, the UK Extension to the EU-US Data Privacy
/// Framework: certified organisations only, which the product cannot check).
pub const UK_ADEQUATE: &[&str] = &[
    "GI", "AD", "AR", "CA", "FO", "GG", "IL", "IM", "JP", "JE", "NZ", "CH", "UY", "KR", "US",
];

/// Countries Colombia's Superintendence of Industry and Commerce (SIC) lists as adequate (Law
/// 1581 of 2012 art. 26; SIC Circular Única, Title V, ch. 3, numeral 3.2, as set by External
/// Circulars 005 and 008 of 2017 and 002 of 2018): its 38 named countries and those the European
/// Commission had found adequate (Switzerland, Canada, Argentina, Guernsey, Isle of Man, Jersey,
/// Faroe Islands, Andorra, Israel, Uruguay, New Zealand). Liechtenstein is not named.
pub const CO_ADEQUATE: &[&str] = &[
    "DE", "AU", "AT", "BE", "BG", "CY", "CR", "HR", "DK", "SK", "SI", "EE", "ES", "US", "FI", "FR",
    "GR", "HU", "IE", "IS", "IT", "JP", "LV", "LT", "LU", "MT", "MX", "NO", "NL", "PE", "PL", "PT",
    "GB", "CZ", "KR", "RO", "RS", "SE", "CH", "CA", "AR", "GG", "IM", "JE", "FO", "AD", "IL", "UY",
    "NZ",
];

/// Whether an exporter in `from` may rest a move to `to` on `adequacy`: the destination is on
/// the adequacy list of the exporter's law (or in the exporter's own legal area), or why not,
/// as one line starting `adequacy: `. The lists are [`EU_ADEQUATE`] for EEA exporters,
/// [`UK_ADEQUATE`] for GB and [`CO_ADEQUATE`] for CO; China's PIPL has no adequacy concept, and
/// the laws of Singapore, Australia and the United States (and any other jurisdiction) keep no
/// list of adequate countries, so `adequacy` is refused for their exports. A US destination is
/// accepted under the EU's and the UK's lists: the Data Privacy Framework covers certified
/// organisations only, which is the operator's to check. `adequacy` was accepted for DE→CN,
/// DE→AU, GB→CN and the like, and the audit report counted them compliant (found by an
/// exploratory session).
pub fn adequacy(from: &str, to: &str) -> Result<(), String> {
    let country = |j: &str| j.split('-').next().unwrap_or(j).to_string();
    let (from_c, to_c) = (country(from), country(to));
    if from_c == to_c {
        return Ok(());
    }
    let eea = |c: &str| EEA.contains(&c);
    let others = "use scc, bcr or a derogation (GDPR Art. 46, 47, 49)";
    if eea(&from_c) {
        if eea(&to_c) || EU_ADEQUATE.contains(&to_c.as_str()) {
            return Ok(());
        }
        return Err(format!(
            "adequacy: the European Commission has no adequacy decision for {to} (GDPR Art. 45); {others}"
        ));
    }
    match from_c.as_str() {
        "GB" if eea(&to_c) || UK_ADEQUATE.contains(&to_c.as_str()) => Ok(()),
        "GB" => Err(format!(
            "adequacy: the UK has no adequacy regulations for {to} (UK GDPR Art. 45, DPA 2018 s. 17A); use scc (the IDTA or the UK addendum), bcr or a derogation (UK GDPR Art. 46, 47, 49)"
        )),
        "CO" if CO_ADEQUATE.contains(&to_c.as_str()) => Ok(()),
        "CO" => Err(format!(
            "adequacy: Colombia's SIC does not list {to} as adequate (Law 1581 of 2012 art. 26; SIC Circular Única title V, 3.2); use bcr, a derogation (art. 26's exceptions) or the SIC's declaration of conformity"
        )),
        "CN" => Err(format!(
            "adequacy: China's PIPL has no adequacy decisions; personal information leaving China for {to} needs cn_standard_contract, cn_security_assessment or cn_certification (PIPL art. 38)"
        )),
        "SG" => Err(format!(
            "adequacy: Singapore's PDPA keeps no list of adequate countries (s. 26; PDP Regulations 2021 reg. 10); a move to {to} rests on what binds the recipient: use scc, bcr or a derogation"
        )),
        "AU" => Err(format!(
            "adequacy: the transfer policy holds no adequacy list for Australia's Privacy Act 1988 (APP 8: the exporter's own belief that {to}'s law is substantially similar is not an adequacy decision); use scc, bcr or a derogation"
        )),
        "US" => Err(format!(
            "adequacy: US law keeps no list of adequate countries for personal data leaving the US; for {to} use scc, bcr or a derogation"
        )),
        _ => Err(format!(
            "adequacy: the transfer policy holds no adequacy list for exports from {from}; for {to} use scc, bcr or a derogation"
        )),
    }
}

/// Why a configured rule may not claim `adequacy`: every move it covers must be one
/// [`adequacy`] accepts (a rule's `*` covers China, whose law has none).
fn check_adequacy_rule(rule: &PolicyRule) -> Result<(), String> {
    let expand = |area: &str| -> Option<Vec<String>> {
        match area {
            "*" => None,
            "EEA" => Some(EEA.iter().map(|c| c.to_string()).collect()),
            code => Some(vec![code.to_string()]),
        }
    };
    let (Some(froms), Some(tos)) = (expand(&rule.from), expand(&rule.to)) else {
        return Err(format!(
            "transfer.rule {}→{}: adequacy is decided per exporter and destination; a rule under adequacy names both (not *)",
            rule.from, rule.to
        ));
    };
    for from in &froms {
        for to in &tos {
            adequacy(from, to)
                .map_err(|e| format!("transfer.rule {}→{}: {e}", rule.from, rule.to))?;
        }
    }
    Ok(())
}

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
            // The replicator records the rule's mechanism with every move it makes: a rule
            // claiming adequacy where there is none would sign that claim into the trail.
            if rule.mechanism == "adequacy" {
                check_adequacy_rule(rule)?;
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
    /// one legal area); China's instruments for data not leaving China; `adequacy` where the
    /// exporter's law has no adequacy decision for the destination ([`adequacy`]). Any other
    /// mechanism is the operator's legal judgement (a derogation, SCCs where the table names
    /// BCRs). Each of these was recorded without a word, and the audit report did not flag the
    /// move (found by exploratory sessions).
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
            _ if mechanism == "adequacy" => adequacy(from, to),
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

    /// `adequacy` only where the exporter's law has a decision for the destination: DE→CN,
    /// DE→CO, DE→AU, DE→SG and GB→CN were recorded under it (found by an exploratory session).
    #[test]
    fn adequacy_is_checked_against_the_exporter_s_list() {
        let p = TransferPolicy::builtin();
        for (from, to) in [
            ("DE", "JP"),
            ("DE", "GB"),
            ("DE", "US"),
            ("DE", "US-CA"),
            ("NO", "CH"),
            ("DE", "NL"),
            ("GB", "NL"),
            ("GB", "GI"),
            ("GB", "KR"),
            ("GB", "US"),
            ("CO", "US"),
            ("CO", "DE"),
            ("CO", "AU"),
        ] {
            assert_eq!(
                p.check_recorded(from, to, "adequacy"),
                Ok(()),
                "{from}→{to}"
            );
        }
        for (from, to, says) in [
            ("DE", "CN", "the European Commission has no adequacy decision for CN (GDPR Art. 45); use scc, bcr or a derogation"),
            ("DE", "CO", "no adequacy decision for CO"),
            ("DE", "AU", "no adequacy decision for AU"),
            ("DE", "SG", "no adequacy decision for SG"),
            ("DE", "GI", "no adequacy decision for GI"),
            ("GB", "CN", "the UK has no adequacy regulations for CN"),
            ("GB", "SG", "the UK has no adequacy regulations for SG"),
            ("CO", "CN", "SIC does not list CN"),
            ("CO", "LI", "SIC does not list LI"),
            ("CN", "DE", "PIPL has no adequacy decisions"),
            ("SG", "DE", "PDPA keeps no list"),
            ("AU", "GB", "no adequacy list for Australia"),
            ("US", "DE", "US law keeps no list"),
        ] {
            let e = p.check_recorded(from, to, "adequacy").unwrap_err();
            assert!(e.starts_with("adequacy: ") && e.contains(says), "{from}→{to}: {e}");
        }
        // One list: the report reads the same function.
        assert!(adequacy("DE", "AU").is_err());
        assert!(adequacy("IS", "GB").is_ok());
    }

    /// A configured rule under adequacy is one the exporter's law allows for every move it
    /// covers: the replicator signs the rule's mechanism into each transfer it records.
    #[test]
    fn configured_adequacy_rules_are_checked_at_load() {
        let with = |from: &str, to: &str| TransferConfig {
            rules: vec![PolicyRule {
                from: from.into(),
                to: to.into(),
                mechanism: "adequacy".into(),
                tia: false,
            }],
            ..TransferConfig::default()
        };
        for (from, to) in [
            ("DE", "JP"),
            ("EEA", "GB"),
            ("GB", "EEA"),
            ("EEA", "CH"),
            ("GB", "US"),
        ] {
            assert!(
                TransferPolicy::from_config(&with(from, to)).is_ok(),
                "{from}→{to}"
            );
        }
        for (from, to, says) in [
            ("DE", "AU", "transfer.rule DE→AU: adequacy: the European Commission has no adequacy decision for AU"),
            ("EEA", "SG", "transfer.rule EEA→SG: adequacy:"),
            ("SG", "AU", "PDPA keeps no list"),
            ("*", "GB", "names both (not *)"),
            ("DE", "*", "names both (not *)"),
            ("CO", "EEA", "SIC does not list LI"),
        ] {
            let e = TransferPolicy::from_config(&with(from, to)).unwrap_err();
            assert!(e.contains(says), "{from}→{to}: {e}");
        }
        // The built-in table's own adequacy rows (EEA↔GB) pass the same check.
        for r in builtin_rules().iter().filter(|r| r.mechanism == "adequacy") {
            assert_eq!(check_adequacy_rule(r), Ok(()), "{r:?}");
        }
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
