//! Audio payload decoders (to be written).
