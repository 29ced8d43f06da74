//! Typed, strict YAML configuration: schema, loading with `--set` overrides, validation.
mod load;
mod overrides;
mod schema;
mod validate;

pub use load::{load_config, load_config_str, ConfigSource};
pub use overrides::apply_override;
pub use schema::*;
pub use validate::parse_device;
