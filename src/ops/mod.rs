pub mod fill;
pub mod reduce;
pub mod conv;
pub mod depthwise;
pub mod maxpool;
