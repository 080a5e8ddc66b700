pub mod fill;
pub mod reduce;
