pub mod fill;
