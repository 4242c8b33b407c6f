//! `problem_responses!`: the error answers of one operation, declared once as a table of
//! status, variant, extra header and description. It writes the poem-openapi `ApiResponse` enum
//! (every body `application/problem+json`, each status with exactly its headers, so the OpenAPI
//! document lists what the operation can answer) and the `From<Problem>` that picks the variant.
//! A problem whose status the table does not declare is a bug in the operation: debug builds
//! (every test) panic on it, and the panic boundary answers 500, which the tests see; release
//! builds log it and answer an opaque 500.

/// Declares an operation's error enum. Each row: `STATUS Variant "description"`, optionally
/// with one header `[ "Name": Type = value ]` after the variant.
macro_rules! problem_responses {
    (
        $(#[$meta:meta])*
        $name:ident {
            $( $status:literal $variant:ident $([$header:literal : $hty:ty = $hval:expr])? => $doc:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(poem_openapi::ApiResponse, Debug)]
        pub enum $name {
            $(
                #[doc = $doc]
                #[oai(status = $status, content_type = "application/problem+json")]
                $variant(poem_openapi::payload::Json<$crate::api::problem::Problem> $(, #[oai(header = $header)] $hty)?),
            )+
        }

        impl From<$crate::api::problem::Problem> for $name {
            fn from(p: $crate::api::problem::Problem) -> Self {
                match p.status {
                    $( $status => Self::$variant(poem_openapi::payload::Json(p) $(, $hval)?), )+
                    other => {
                        debug_assert!(false, "{} does not declare status {other}: {p:?}", stringify!($name));
                        tracing::error!(status = other, operation = stringify!($name), detail = %p.detail, "undeclared error status; answering 500");
                        Self::from($crate::api::problem::Problem::internal())
                    }
                }
            }
        }
    };
}

pub(crate) use problem_responses;
