variable "secret" {
  type      = string
  sensitive = true
}
resource "terraform_data" "c" {
  input = var.secret
}
output "o" {
  value     = var.secret
  sensitive = true
}
