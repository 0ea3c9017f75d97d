//! Compiling rules as written into a [`RewriteSet`], once at load: CEL compiled
//! with its variables checked, pointers and regexes checked, schemas compiled.

use std::collections::HashSet;
use std::sync::Arc;

use cel::{Env, Program};

use super::pointer::check_pointer;
use super::{
    Aliases, Injection, Origin, Redaction, Rewrite, RewriteConfig, RewriteError, RewriteSet,
    SetValue, ValidateConfig, Validation,
};
use crate::cel::{VARIABLES, free_variables};
use crate::prefilter::Prefilter;

impl RewriteSet {
    /// Compiles rewrite rules; every expression, schema and regex once.
    pub fn compile(configs: &[RewriteConfig]) -> Result<Self, RewriteError> {
        let env = Arc::new(Env::stdlib());
        let mut aliases = Aliases::default();
        let mut rules = Vec::new();
        let mut uses = HashSet::new();
        for config in configs {
            let error = |reason: String| RewriteError {
                rule: config.name.clone(),
                reason,
            };
            let mut compile = |source: &str| -> Result<Program, RewriteError> {
                let program = env
                    .compile(source)
                    .map_err(|e| error(format!("`{source}`: {}", e.to_string().trim())))?;
                for variable in free_variables(&program) {
                    let known = VARIABLES
                        .iter()
                        .find(|v| **v == variable)
                        .ok_or_else(|| error(format!("unknown variable `{variable}`")))?;
                    uses.insert(*known);
                }
                Ok(program)
            };
            if let Some(alias) = &config.alias {
                aliases.add(alias).map_err(&error)?;
            }
            let when = config.when.as_deref().map(&mut compile).transpose()?;
            let mut set = Vec::new();
            for s in &config.set {
                check_pointer(&s.pointer).map_err(&error)?;
                let value = match (&s.value, &s.expr) {
                    (Some(v), None) => SetValue::Literal(v.clone()),
                    (None, Some(e)) => SetValue::Expr(compile(e)?),
                    _ => {
                        return Err(error(format!(
                            "set {}: give exactly one of `value` and `expr`",
                            s.pointer
                        )));
                    }
                };
                set.push(Injection {
                    pointer: s.pointer.clone(),
                    value,
                    on_missing: s.on_missing,
                });
            }
            for p in config
                .remove
                .iter()
                .chain(config.clamp.iter().map(|c| &c.pointer))
            {
                check_pointer(p).map_err(&error)?;
            }
            let validate = match &config.validate {
                None => None,
                Some(ValidateConfig {
                    schema: Some(schema),
                    from_tools_list: false,
                }) => Some(Validation::Schema(Arc::new(
                    jsonschema::validator_for(schema)
                        .map_err(|e| error(format!("validate.schema: {e}")))?,
                ))),
                Some(ValidateConfig {
                    schema: None,
                    from_tools_list: true,
                }) => Some(Validation::FromToolsList),
                Some(_) => {
                    return Err(error(
                        "validate: give either `schema` or `from_tools_list: true`".into(),
                    ));
                }
            };
            let mut redact = Vec::new();
            for r in &config.redact {
                redact.push(match (&r.regex, &r.pointer) {
                    (Some(re), None) => Redaction::Regex(
                        regex::Regex::new(re).map_err(|e| error(format!("redact.regex: {e}")))?,
                        r.replacement.clone(),
                    ),
                    (None, Some(p)) => {
                        check_pointer(p).map_err(&error)?;
                        Redaction::Pointer(p.clone(), r.replacement.clone())
                    }
                    _ => {
                        return Err(error(
                            "redact: give exactly one of `regex` and `pointer`".into(),
                        ));
                    }
                });
            }
            rules.push(Rewrite {
                name: config.name.clone(),
                prefilter: Prefilter::new(&config.methods, &config.tools),
                when,
                set,
                remove: config.remove.clone(),
                clamp: config.clamp.clone(),
                validate,
                filter_tools: config.filter_tools,
                redact,
            });
        }
        Ok(Self {
            aliases,
            rules,
            env,
            uses,
            rewrites_requests: false,
            rewrites_responses: false,
        }
        .summarized())
    }

    /// The set with the answers asked on every request worked out.
    pub(super) fn summarized(mut self) -> Self {
        self.rewrites_requests =
            !self.aliases.is_empty() || self.rules.iter().any(Rewrite::touches_requests);
        self.rewrites_responses = self.rewrites_response(Origin::Unknown)
            || self.rewrites_response(Origin::Call {
                method: Some("tools/list"),
                tool: None,
            });
        self
    }

    /// An empty set: nothing is rewritten.
    pub fn empty() -> Self {
        Self {
            aliases: Aliases::default(),
            rules: Vec::new(),
            env: Arc::new(Env::stdlib()),
            uses: HashSet::new(),
            rewrites_requests: false,
            rewrites_responses: false,
        }
    }
}
