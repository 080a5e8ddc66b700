pub mod fill;
pub mod reduce;
pub mod loss;
