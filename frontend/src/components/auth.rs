//! Sign in or register. The token goes to the session service; errors from the server
//! (taken name, wrong password, field rules) are shown next to the field they concern.

use taskpulse_shared::dto::Credentials;
use web_sys::HtmlInputElement;
use yew::{
    Callback, Html, Properties, SubmitEvent, TargetCast, function_component, html, use_state,
};

use crate::services::{api, session::Session};

/// Props of [`AuthForm`].
#[derive(Properties, PartialEq)]
pub struct AuthProps {
    /// Signed in.
    pub on_signed_in: Callback<Session>,
    /// Why the user was signed out, if they were.
    #[prop_or_default]
    pub notice: Option<String>,
}

/// The sign-in / register form.
#[function_component(AuthForm)]
pub fn auth_form(props: &AuthProps) -> Html {
    let register = use_state(|| false);
    let username = use_state(String::new);
    let password = use_state(String::new);
    let error = use_state(|| None::<(Option<String>, String)>);
    let sending = use_state(|| false);

    let on_username = {
        let username = username.clone();
        Callback::from(move |e: yew::InputEvent| {
            username.set(e.target_unchecked_into::<HtmlInputElement>().value())
        })
    };
    let on_password = {
        let password = password.clone();
        Callback::from(move |e: yew::InputEvent| {
            password.set(e.target_unchecked_into::<HtmlInputElement>().value())
        })
    };
    let toggle = {
        let (register, error) = (register.clone(), error.clone());
        Callback::from(move |_| {
            register.set(!*register);
            error.set(None);
        })
    };
    let on_submit = {
        let (register, username, password) = (register.clone(), username.clone(), password.clone());
        let (error, sending, on_signed_in) =
            (error.clone(), sending.clone(), props.on_signed_in.clone());
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            let credentials =
                Credentials { username: username.trim().to_owned(), password: (*password).clone() };
            if credentials.username.is_empty() {
                return error.set(Some((Some("username".into()), "Enter a user name.".into())));
            }
            if credentials.password.is_empty() {
                return error.set(Some((Some("password".into()), "Enter a password.".into())));
            }
            sending.set(true);
            let (register, error, sending, on_signed_in) =
                (*register, error.clone(), sending.clone(), on_signed_in.clone());
            wasm_bindgen_futures::spawn_local(async move {
                let answer = if register {
                    api::register(&credentials).await
                } else {
                    api::login(&credentials).await
                };
                sending.set(false);
                match answer {
                    Ok(token) => on_signed_in
                        .emit(Session { username: credentials.username, token: token.token }),
                    Err(failure) => error.set(Some((failure.field, failure.message))),
                }
            });
        })
    };
    let field_error = |field: &str| match &*error {
        Some((Some(f), message)) if f == field => Some(message.clone()),
        _ => None,
    };
    let form_error = match &*error {
        Some((None, message)) => Some(message.clone()),
        Some((Some(f), message)) if f != "username" && f != "password" => Some(message.clone()),
        _ => None,
    };
    let (user_error, pass_error) = (field_error("username"), field_error("password"));
    let title = if *register { "Create an account" } else { "Sign in" };
    html! {
        <main class="auth">
            <h1>{ "TaskPulse" }</h1>
            <p class="lead">{ "Watch your long-running tasks live." }</p>
            if let Some(notice) = props.notice.clone() {
                <p class="notice" role="status">{ notice }</p>
            }
            <form onsubmit={on_submit} novalidate=true aria-labelledby="auth-title">
                <h2 id="auth-title">{ title }</h2>
                <label for="username">{ "User name" }</label>
                <input id="username" autocomplete="username" value={(*username).clone()}
                       oninput={on_username} aria-invalid={user_error.is_some().to_string()}
                       aria-describedby="username-error" />
                <p id="username-error" class="field-error">{ user_error.unwrap_or_default() }</p>
                <label for="password">{ "Password" }</label>
                <input id="password" type="password" value={(*password).clone()} oninput={on_password}
                       autocomplete={if *register { "new-password" } else { "current-password" }}
                       aria-invalid={pass_error.is_some().to_string()} aria-describedby="password-error" />
                <p id="password-error" class="field-error">{ pass_error.unwrap_or_default() }</p>
                if let Some(message) = form_error {
                    <p class="form-error" role="alert">{ message }</p>
                }
                <button type="submit" disabled={*sending}>{ title }</button>
            </form>
            <p class="switch">
                { if *register { "Already have an account? " } else { "New here? " } }
                <button type="button" class="link" onclick={toggle}>
                    { if *register { "Sign in" } else { "Create an account" } }
                </button>
            </p>
        </main>
    }
}
