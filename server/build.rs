//! Rebuilds the server when a migration is added: `sqlx::migrate!` embeds the files, and
//! cargo does not see new files in a directory by itself (as sqlx's documentation advises).

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
