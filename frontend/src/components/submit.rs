//! The submit form: text-to-image (prompt, aspect ratio) or image-to-image (prompt, image
//! URL). Checks fields before sending and shows every error next to its field, including
//! the ones the server names.

use taskpulse_shared::dto::{AspectRatio, SubmitTaskRequest};
use web_sys::{HtmlInputElement, HtmlSelectElement, HtmlTextAreaElement};
use yew::{
    Callback, Html, Properties, SubmitEvent, TargetCast, function_component, html, use_state,
};

use crate::services::api::{self, ApiFailure};

/// Longest prompt the server accepts by default (`tasks.max_prompt_chars`).
const MAX_PROMPT: usize = 2000;

/// Props of [`SubmitForm`].
#[derive(Properties, PartialEq)]
pub struct SubmitProps {
    /// The signed-in user's token.
    pub token: String,
    /// A task was accepted: its number and what was sent.
    pub on_submitted: Callback<(String, SubmitTaskRequest)>,
    /// The API refused the token.
    pub on_unauthorized: Callback<()>,
}

/// Per-field messages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldErrors {
    /// On the prompt.
    pub prompt: Option<String>,
    /// On the image URL.
    pub image_url: Option<String>,
    /// On the whole form.
    pub form: Option<String>,
}

/// What the form holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    /// `true` for image-to-image.
    pub image_to_image: bool,
    /// The prompt.
    pub prompt: String,
    /// The aspect ratio.
    pub aspect_ratio: AspectRatio,
    /// The source image, for image-to-image.
    pub image_url: String,
}

impl Draft {
    /// The request, or the messages that stop it.
    ///
    /// # Errors
    /// [`FieldErrors`] naming each field that is not acceptable.
    pub fn request(&self) -> Result<SubmitTaskRequest, FieldErrors> {
        let mut errors = FieldErrors::default();
        let prompt = self.prompt.trim();
        if prompt.is_empty() {
            errors.prompt = Some("Describe what to draw.".into());
        } else if prompt.chars().count() > MAX_PROMPT {
            errors.prompt = Some(format!("At most {MAX_PROMPT} characters."));
        }
        let url = self.image_url.trim();
        if self.image_to_image {
            if url.is_empty() {
                errors.image_url = Some("Give the URL of the image to transform.".into());
            } else if !(url.starts_with("http://") || url.starts_with("https://")) {
                errors.image_url = Some("The URL must start with http:// or https://.".into());
            }
        }
        if errors != FieldErrors::default() {
            return Err(errors);
        }
        Ok(if self.image_to_image {
            SubmitTaskRequest::ImageToImage {
                prompt: prompt.to_owned(),
                image_url: url.to_owned(),
                aspect_ratio: self.aspect_ratio,
            }
        } else {
            SubmitTaskRequest::TextToImage {
                prompt: prompt.to_owned(),
                aspect_ratio: self.aspect_ratio,
            }
        })
    }
}

fn server_errors(failure: ApiFailure) -> FieldErrors {
    let mut errors = FieldErrors::default();
    match failure.field.as_deref() {
        Some("prompt") => errors.prompt = Some(failure.message),
        Some("imageUrl") => errors.image_url = Some(failure.message),
        _ => errors.form = Some(failure.message),
    }
    errors
}

/// The form.
#[function_component(SubmitForm)]
pub fn submit_form(props: &SubmitProps) -> Html {
    let draft = use_state(|| Draft {
        image_to_image: false,
        prompt: String::new(),
        aspect_ratio: AspectRatio::Square,
        image_url: String::new(),
    });
    let errors = use_state(FieldErrors::default);
    let sending = use_state(|| false);

    let edit = |change: fn(&mut Draft, String)| {
        let draft = draft.clone();
        move |value: String| {
            let mut next = (*draft).clone();
            change(&mut next, value);
            draft.set(next);
        }
    };
    let on_kind = {
        let set = edit(|d, v| d.image_to_image = v == "image-to-image");
        Callback::from(move |e: yew::Event| {
            set(e.target_unchecked_into::<HtmlSelectElement>().value())
        })
    };
    let on_prompt = {
        let set = edit(|d, v| d.prompt = v);
        Callback::from(move |e: yew::InputEvent| {
            set(e.target_unchecked_into::<HtmlTextAreaElement>().value())
        })
    };
    let on_ratio = {
        let set = edit(|d, v| {
            d.aspect_ratio =
                AspectRatio::ALL.into_iter().find(|r| r.as_str() == v).unwrap_or_default()
        });
        Callback::from(move |e: yew::Event| {
            set(e.target_unchecked_into::<HtmlSelectElement>().value())
        })
    };
    let on_url = {
        let set = edit(|d, v| d.image_url = v);
        Callback::from(move |e: yew::InputEvent| {
            set(e.target_unchecked_into::<HtmlInputElement>().value())
        })
    };
    let on_submit = {
        let (draft, errors, sending) = (draft.clone(), errors.clone(), sending.clone());
        let (token, on_submitted, on_unauthorized) =
            (props.token.clone(), props.on_submitted.clone(), props.on_unauthorized.clone());
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            if *sending {
                return;
            }
            let request = match draft.request() {
                Ok(request) => request,
                Err(found) => return errors.set(found),
            };
            errors.set(FieldErrors::default());
            sending.set(true);
            let (draft, errors, sending) = (draft.clone(), errors.clone(), sending.clone());
            let (token, on_submitted, on_unauthorized) =
                (token.clone(), on_submitted.clone(), on_unauthorized.clone());
            wasm_bindgen_futures::spawn_local(async move {
                match api::submit(&token, &request).await {
                    Ok(accepted) => {
                        on_submitted.emit((accepted.task_no, request));
                        draft.set(Draft { prompt: String::new(), ..(*draft).clone() });
                    }
                    Err(failure) if failure.is_unauthorized() => on_unauthorized.emit(()),
                    Err(failure) => errors.set(server_errors(failure)),
                }
                sending.set(false);
            });
        })
    };

    let invalid = |error: &Option<String>| error.is_some().to_string();
    html! {
        <form class="submit" onsubmit={on_submit} novalidate=true aria-labelledby="submit-title">
            <h2 id="submit-title">{ "New task" }</h2>
            <label for="kind">{ "Kind" }</label>
            <select id="kind" onchange={on_kind}>
                <option value="text-to-image" selected={!draft.image_to_image}>{ "Text to image" }</option>
                <option value="image-to-image" selected={draft.image_to_image}>{ "Image to image" }</option>
            </select>

            <label for="prompt">{ "Prompt" }</label>
            <textarea id="prompt" rows="3" value={draft.prompt.clone()} oninput={on_prompt}
                      aria-invalid={invalid(&errors.prompt)} aria-describedby="prompt-error"
                      placeholder="A lighthouse at dusk, oil painting" />
            <p id="prompt-error" class="field-error">{ errors.prompt.clone().unwrap_or_default() }</p>

            if draft.image_to_image {
                <label for="image-url">{ "Image URL" }</label>
                <input id="image-url" type="url" value={draft.image_url.clone()} oninput={on_url}
                       aria-invalid={invalid(&errors.image_url)} aria-describedby="image-url-error"
                       placeholder="https://example.com/photo.png" />
                <p id="image-url-error" class="field-error">{ errors.image_url.clone().unwrap_or_default() }</p>
            }

            <label for="ratio">{ "Aspect ratio" }</label>
            <select id="ratio" onchange={on_ratio}>
                { for AspectRatio::ALL.iter().map(|ratio| html! {
                    <option value={ratio.as_str()} selected={draft.aspect_ratio == *ratio}>{ ratio.as_str() }</option>
                }) }
            </select>

            if let Some(message) = errors.form.clone() {
                <p class="form-error" role="alert">{ message }</p>
            }
            <button type="submit" disabled={*sending}>{ if *sending { "Submitting…" } else { "Submit" } }</button>
        </form>
    }
}
