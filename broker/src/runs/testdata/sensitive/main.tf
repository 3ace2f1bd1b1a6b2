variable "db_password" {
  type      = string
  sensitive = true
}
variable "region" {
  type    = string
  default = "eu-west-1"
}
variable "api" {
  type      = object({ name = string, token = string })
  sensitive = true
  default   = { name = "billing", token = "tok-Api7Secr3t" }
}
resource "terraform_data" "db" {
  input = {
    password = var.db_password
    region   = var.region
  }
}
resource "terraform_data" "list" {
  input = [var.region, var.db_password]
}
resource "terraform_data" "api" {
  input = var.api
}
module "child" {
  source = "./child"
  secret = "child-Literal5Secr3t"
}
output "password" {
  value     = var.db_password
  sensitive = true
}
output "literal" {
  value     = "output-Literal6Secr3t"
  sensitive = true
}
output "region" {
  value = var.region
}
