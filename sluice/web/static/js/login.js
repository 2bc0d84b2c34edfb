import { api, errorMessage } from "./api.js";

const form = document.querySelector("[data-login-form]");
const errorBox = form.querySelector("[data-login-error]");
const submit = form.querySelector("[data-login-submit]");
const email = form.querySelector("#email");
const password = form.querySelector("#password");

function safeNext(value) {
  if (!value || !value.startsWith("/") || value.startsWith("//") || value.includes("\\")) return "/";
  return value;
}

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = false;
}

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  errorBox.hidden = true;
  if (!email.value.trim() || !password.value) {
    showError("Enter your email and password.");
    (email.value.trim() ? password : email).focus();
    return;
  }
  submit.disabled = true;
  submit.textContent = "Signing in…";
  const res = await api("/api/auth/login", {
    method: "POST",
    body: { email: email.value.trim(), password: password.value },
  });
  if (res.ok) {
    location.assign(safeNext(form.dataset.next));
    return;
  }
  submit.disabled = false;
  submit.textContent = "Sign in";
  if (res.status === 401 || res.status === 400) {
    showError("Incorrect email or password.");
  } else {
    showError(errorMessage(res));
  }
  password.select();
  password.focus();
});
