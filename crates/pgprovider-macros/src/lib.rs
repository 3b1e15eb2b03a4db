//! Macros for pgprovider: `#[derive(FromRow)]` reads a struct from a row, field by field;
//! `embed_migrations!` puts a folder of migration files in the binary.
//!
//! Use it through `pgprovider` (feature `derive`), which re-exports it next to the
//! `FromRow` trait:
//!
//! ```text
//! #[derive(pgprovider::FromRow)]
//! struct User {
//!     id: i64,
//!     #[from_row(rename = "user_name")]
//!     name: String,
//!     email: Option<String>,
//! }
//! ```
//!
//! Named fields are read by column name (`rename` picks another), tuple-struct fields by
//! position. The impl works for any driver's row type that can read each field's type
//! (`pgprovider::Column<T>`), so one struct serves every driver.
#![deny(missing_docs)]

use proc_macro::TokenStream;
use quote::quote;
use syn::{Data, DeriveInput, Fields, LitStr, parse_macro_input};

/// Derives `pgprovider::FromRow` for a struct; see the crate docs.
#[proc_macro_derive(FromRow, attributes(from_row))]
pub fn derive_from_row(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

fn expand(input: &DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    let name = &input.ident;
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new_spanned(
            name,
            "FromRow can only be derived for structs",
        ));
    };
    let mut types = Vec::new();
    let body = match &data.fields {
        Fields::Named(fields) => {
            let mut inits = Vec::new();
            for f in &fields.named {
                let ident = f.ident.as_ref().expect("named field");
                let column = rename(f)?
                    .unwrap_or_else(|| ident.to_string().trim_start_matches("r#").to_owned());
                let ty = &f.ty;
                inits.push(quote! {
                    #ident: <__R as ::pgprovider::Column<#ty>>::column_named(row, #column)?
                });
                types.push(ty.clone());
            }
            quote! { Self { #(#inits),* } }
        }
        Fields::Unnamed(fields) => {
            let mut inits = Vec::new();
            for (i, f) in fields.unnamed.iter().enumerate() {
                if let Some(attr) = f.attrs.iter().find(|a| a.path().is_ident("from_row")) {
                    return Err(syn::Error::new_spanned(
                        attr,
                        "tuple-struct fields are read by position; rename applies to named fields",
                    ));
                }
                let ty = &f.ty;
                inits.push(quote! { <__R as ::pgprovider::Column<#ty>>::column(row, #i)? });
                types.push(ty.clone());
            }
            quote! { Self(#(#inits),*) }
        }
        Fields::Unit => quote! { Self },
    };
    let (_, ty_generics, where_clause) = input.generics.split_for_impl();
    // The struct's own generics, plus the row type.
    let mut generics = input.generics.clone();
    generics.params.push(syn::parse_quote!(__R));
    let (impl_generics_r, _, _) = generics.split_for_impl();
    let predicates = where_clause.map(|w| &w.predicates);
    Ok(quote! {
        impl #impl_generics_r ::pgprovider::FromRow<__R> for #name #ty_generics
        where
            #(__R: ::pgprovider::Column<#types>,)*
            #predicates
        {
            fn from_row(row: &__R) -> ::pgprovider::Result<Self> {
                ::std::result::Result::Ok(#body)
            }
        }
    })
}

/// Embeds a folder of migration files in the binary: `embed_migrations!("migrations")`
/// (relative to the crate's `Cargo.toml`) expands to
/// `pgprovider::migrate::Migrations::from_files([...])` with every `.sql` file of the folder
/// included by `include_str!`, so edits rebuild the crate (a file added later needs a
/// `cargo clean -p` or a touch of the calling file).
#[proc_macro]
pub fn embed_migrations(input: TokenStream) -> TokenStream {
    let dir = parse_macro_input!(input as LitStr);
    embed(&dir)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

fn embed(dir: &LitStr) -> syn::Result<proc_macro2::TokenStream> {
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let path = std::path::Path::new(&root).join(dir.value());
    let entries = std::fs::read_dir(&path).map_err(|e| {
        syn::Error::new(
            dir.span(),
            format!("cannot read the migrations folder {}: {e}", path.display()),
        )
    })?;
    let mut files: Vec<(String, String)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            name.ends_with(".sql")
                .then(|| (name, e.path().display().to_string()))
        })
        .collect();
    files.sort();
    let pairs = files
        .iter()
        .map(|(name, full)| quote! { (#name, ::std::include_str!(#full)) });
    Ok(quote! {
        ::pgprovider::migrate::Migrations::from_files([#(#pairs),*])
    })
}

/// The column named by `#[from_row(rename = "…")]`, if any.
fn rename(field: &syn::Field) -> syn::Result<Option<String>> {
    let mut out = None;
    for attr in field.attrs.iter().filter(|a| a.path().is_ident("from_row")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("rename") {
                out = Some(meta.value()?.parse::<LitStr>()?.value());
                Ok(())
            } else {
                Err(meta.error("unknown from_row option; the one option is rename = \"column\""))
            }
        })?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::expand;

    fn run(src: &str) -> Result<String, String> {
        let input = syn::parse_str(src).unwrap();
        expand(&input)
            .map(|t| t.to_string())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn named_fields_read_by_name_with_renames() {
        let out =
            run("struct U { id: i64, #[from_row(rename = \"user_name\")] name: String }").unwrap();
        assert!(out.contains("column_named (row , \"id\")"), "{out}");
        assert!(out.contains("\"user_name\""), "{out}");
        assert!(
            out.contains("__R : :: pgprovider :: Column < i64 >"),
            "{out}"
        );
    }

    #[test]
    fn tuple_unit_and_generic_structs() {
        let out = run("struct P(i64, String);").unwrap();
        assert!(out.contains("column (row , 1usize)"), "{out}");
        assert!(run("struct Nothing;").unwrap().contains("Self"));
        let out = run("struct G<T: Clone> where T: Send { v: T }").unwrap();
        assert!(out.contains("T : Send"), "{out}");
        assert!(
            run("struct R { r#type: String }")
                .unwrap()
                .contains("\"type\"")
        );
    }

    #[test]
    fn migrations_are_embedded_in_name_order() {
        let dir = tempfile_dir();
        std::fs::write(dir.join("2_b.sql"), "SELECT 2").unwrap();
        std::fs::write(dir.join("1_a.sql"), "SELECT 1").unwrap();
        std::fs::write(dir.join("notes.md"), "no").unwrap();
        let lit = syn::LitStr::new(dir.to_str().unwrap(), proc_macro2::Span::call_site());
        let out = super::embed(&lit).unwrap().to_string();
        let a = out.find("\"1_a.sql\"").unwrap();
        let b = out.find("\"2_b.sql\"").unwrap();
        assert!(a < b && !out.contains("notes.md"), "{out}");
        let missing = syn::LitStr::new("/nonexistent/dir", proc_macro2::Span::call_site());
        assert!(
            super::embed(&missing)
                .unwrap_err()
                .to_string()
                .contains("cannot read")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("pgprovider-macros-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn misuse_is_a_clear_compile_error() {
        assert!(
            run("enum E { A }")
                .unwrap_err()
                .contains("only be derived for structs")
        );
        assert!(
            run("struct U { #[from_row(skip)] id: i64 }")
                .unwrap_err()
                .contains("rename")
        );
        assert!(
            run("struct P(#[from_row(rename = \"x\")] i64);")
                .unwrap_err()
                .contains("by position")
        );
    }
}
