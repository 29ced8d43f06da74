//! Ring collectives over TCP between CPU ranks.
