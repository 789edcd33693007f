// What the pages share: the server's base URL (this origin, or `?server=` when the page is
// served by `vite dev`) and the toasts the React seed calls without defining them.
export const BASE_URL = new URLSearchParams(location.search).get("server") ?? location.origin;

function toast(kind, text) {
  const item = document.createElement("li");
  item.className = `toast ${kind}`;
  item.textContent = text;
  document.querySelector("#toasts").append(item);
}

export const showSuccessToast = (text) => toast("success", text);
export const showErrorToast = (text) => toast("error", text);
